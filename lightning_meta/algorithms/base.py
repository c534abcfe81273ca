"""The base of every algorithm: optimiser and schedule from config, metrics, logging, evaluation protocol.

An algorithm supplies only what is its own: ``meta_loss`` (an episode to a training loss, plus query
scores for the training accuracy) and ``predict`` (query scores of an episode, adapting first where the
method does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError
from lightning_meta.metrics import EpisodeAccuracy, episode_accuracy

ALGORITHMS: dict[str, type[MetaLearner]] = {}


def register(cls: type[MetaLearner]) -> type[MetaLearner]:
    """Makes an algorithm findable by its ``name`` (``ALGORITHMS['protonet']``)."""
    ALGORITHMS[cls.name] = cls
    return cls


class MetaLearner(pl.LightningModule, ABC):
    """Shared machinery of all algorithms.

    Args:
        image_shape: shape of one input, e.g. (1, 28, 28); ``train.py`` fills it in from the data.
        lr: learning rate of the (outer) optimiser.
        optimizer: ``adam`` or ``sgd``.
        weight_decay: L2 penalty of the optimiser.
        lr_decay_every: multiply the learning rate by ``lr_decay`` every this many training steps (None: never).
        lr_decay: the factor of that step decay.
    """

    name: ClassVar[str]

    def __init__(
        self,
        image_shape: tuple[int, ...],
        lr: float = 1e-3,
        optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        lr_decay_every: int | None = None,
        lr_decay: float = 0.5,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ConfigError(f"model.lr must be positive (got {lr}); the papers use about 1e-3 with Adam")
        if lr_decay_every is not None and lr_decay_every < 1:
            raise ConfigError(f"model.lr_decay_every must be a positive number of steps or null (got {lr_decay_every})")
        if not 0 < lr_decay <= 1:
            raise ConfigError(f"model.lr_decay must be in (0, 1] (got {lr_decay})")
        self.save_hyperparameters()  # the subclass's arguments too: Lightning collects the whole __init__ chain
        self.val_accuracy = EpisodeAccuracy()
        self.test_accuracy = EpisodeAccuracy()

    @abstractmethod
    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """The training loss of a task batch, and the query scores [T, N*Q, N] it came from."""

    @abstractmethod
    def predict(self, episode: Episode) -> Tensor:
        """Query scores [T, N*Q, N] (higher is more likely) for every task of the batch."""

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        loss, scores = self.meta_loss(episode)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", 100 * episode_accuracy(scores, episode.query_labels).mean(), prog_bar=True)
        return loss

    def validation_step(self, episode: Episode, batch_idx: int) -> None:
        self.val_accuracy.update(episode_accuracy(self.predict(episode), episode.query_labels))

    def test_step(self, episode: Episode, batch_idx: int) -> None:
        self.test_accuracy.update(episode_accuracy(self.predict(episode), episode.query_labels))

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val", self.val_accuracy)

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test", self.test_accuracy)

    def _log_accuracy(self, stage: str, metric: EpisodeAccuracy) -> None:
        mean, ci95 = metric.compute()  # already reduced over all ranks
        self.log(f"{stage}/acc", mean.float(), prog_bar=True)
        self.log(f"{stage}/acc_ci95", ci95.float())
        metric.reset()

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.optimizer == "adam":
            optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_decay_every is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.lr_decay_every, gamma=hp.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lightning_meta"] = {"algorithm": self.name}
