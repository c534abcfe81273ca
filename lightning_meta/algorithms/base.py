"""The base of every algorithm: optimiser and schedule from config, metrics, logging, evaluation protocol.

An algorithm supplies only what is its own: ``meta_loss`` (an episode to a training loss, plus the query
predictions for the training metric) and ``predict`` (query predictions of an episode, adapting first where
the method does). Classification episodes are scored by accuracy in percent (``acc``), regression episodes
(``n_way`` 0) by mean squared error (``mse``).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError, TrainingError
from lightning_meta.metrics import EpisodeMean, episode_accuracy, episode_mse

ALGORITHMS: dict[str, type[MetaLearner]] = {}

# Under DDP Lightning recommends sync_dist for metrics logged per epoch; ours are reduced over the ranks already.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")


def attention_scale(scale: float, learn_scale: bool) -> nn.Parameter:
    """s, the inverse temperature of an attention softmax over cosines (Matching Networks, Meta Networks): fixed, or
    learned from ``scale``. 1 is the bare cosine of both papers."""
    if scale <= 0:
        raise ConfigError(f"model.scale must be positive (got {scale}); 1 is the paper's attention")
    return nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)


def fixed_output_task(model: MetaLearner, n_classes: int, units: int, at_most: bool = False) -> None:
    """For a model with one output unit per class: a task of ``n_classes`` classes must have exactly ``units`` of
    them, or, ``at_most``, no more."""
    if n_classes > units if at_most else n_classes != units:
        need = f"at most {units}" if at_most else f"exactly {units}"
        raise ConfigError(f"{type(model).__name__}'s output layer has {units} units, one per class, so a task needs "
                          f"{need} classes (got {n_classes}); give {need} class folders, or train a model with "
                          f"model.n_way {n_classes}")


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
        lr_final: anneal the learning rate linearly from ``lr`` to this over ``trainer.max_steps`` (None: don't).
    """

    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]] = ("classification",)  # the kinds of episode (data.task) it can learn
    adapts_at_evaluation: ClassVar[bool] = False  # needs gradients on the support set in validation and test

    def __init__(
        self,
        image_shape: tuple[int, ...],
        lr: float = 1e-3,
        optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        lr_decay_every: int | None = None,
        lr_decay: float = 0.5,
        lr_final: float | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ConfigError(f"model.lr must be positive (got {lr}); the papers use about 1e-3 with Adam")
        if lr_decay_every is not None and lr_decay_every < 1:
            raise ConfigError(f"model.lr_decay_every must be a positive number of steps or null (got {lr_decay_every})")
        if not 0 < lr_decay <= 1:
            raise ConfigError(f"model.lr_decay must be in (0, 1] (got {lr_decay})")
        if lr_final is not None and (lr_final < 0 or lr_decay_every is not None):
            raise ConfigError(f"model.lr_final must be >= 0 and excludes model.lr_decay_every (got {lr_final}, "
                              f"{lr_decay_every}); choose one schedule")
        self.save_hyperparameters()  # the subclass's arguments too: Lightning collects the whole __init__ chain
        self.val_metric, self.test_metric = EpisodeMean(), EpisodeMean()
        self.metric_name = "acc"  # or "mse", set by the episodes seen

    def validate_setup(self, data: Any, inference_mode: bool, max_steps: int) -> None:
        """Raises a ConfigError if this model cannot learn from ``data`` with this trainer; ``train.py`` calls it
        before anything is written, and ``setup`` again for runs started from Python."""
        task = getattr(data, "task", "classification")
        if task not in self.tasks:
            raise ConfigError(f"{type(self).__name__} learns {' or '.join(self.tasks)} episodes, but the data "
                              f"gives {task} episodes; choose another data module or algorithm")
        if self.adapts_at_evaluation and inference_mode:
            raise ConfigError(f"{type(self).__name__} takes gradients on the support set when it evaluates; "
                              f"set trainer.inference_mode: false")
        if self.hparams.lr_final is not None and max_steps < 1:
            raise ConfigError("model.lr_final anneals the learning rate over trainer.max_steps; set max_steps")

    @staticmethod
    def check_n_way(data: Any, n_way: int, at_most: bool = False) -> None:
        """For a model with one output unit per class: its training and validation episodes must be ``n_way``-way,
        or, ``at_most`` (a model that scores an N-way episode with its first N units), no episode wider."""
        for subset in data.shapes if at_most else ("train", "val"):
            n = data.shapes[subset][0]
            if n > n_way if at_most else n != n_way:
                fix = f"raise model.n_way to at least {n}" if at_most else "make them equal"
                raise ConfigError(f"model.n_way is {n_way} but the data gives {n}-way {subset} episodes; the output "
                                  f"layer has one unit per class, so {fix}")

    def setup(self, stage: str) -> None:
        if self.trainer is not None and self.trainer.datamodule is not None:
            self.validate_setup(self.trainer.datamodule, self.trainer.test_loop.inference_mode, self.trainer.max_steps)

    def score(self, predictions: Tensor, episode: Episode) -> Tensor:
        """The per-episode metric [T]: query accuracy in percent, or mean squared error for regression."""
        self.metric_name = "acc" if episode.n_way else "mse"
        if episode.n_way:
            return episode_accuracy(predictions, episode.query_labels)
        return episode_mse(predictions, episode.query_labels)

    @abstractmethod
    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """The training loss of a task batch, and the query predictions it came from: scores [T, N*Q, N]
        (higher is more likely), or values [T, Q, 1] for regression."""

    @abstractmethod
    def predict(self, episode: Episode) -> Tensor:
        """Query predictions for every task of the batch, shaped as in ``meta_loss``."""

    calibrated: ClassVar[bool] = True  # predict's class scores are logits, so ``probabilities`` is a softmax

    def probabilities(self, scores: Tensor) -> Tensor:
        """Class probabilities [..., N] from ``predict``'s scores: a softmax over the classes, the scores being
        log-probabilities up to a constant. An algorithm whose scores are not (``calibrated`` False) overrides it
        to normalise its own scores instead."""
        return scores.float().softmax(-1)

    def check_task(self, shots: list[int]) -> None:
        """Raises a ConfigError if this model cannot classify a task whose classes have ``shots[n]`` support
        examples each (``lightning_meta.predict`` asks before it reads a query); any number of classes (at least
        two) and of shots by default."""
        if len(shots) < 2 or min(shots) < 1:
            raise ConfigError(f"a task needs at least two classes with at least one support example each (got "
                              f"{len(shots)} classes with {shots} examples)")

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        loss, predictions = self.meta_loss(episode)
        score = self.score(predictions.detach(), episode).mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log(f"train/{self.metric_name}", score, prog_bar=True)
        return loss

    def on_before_backward(self, loss: Tensor) -> None:
        """Stops training on a loss that is NaN or infinite (on any rank), before it reaches the weights."""
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
            raise TrainingError(f"{self.name}: the training loss is {loss.item()} at step {self.global_step}; "
                                f"training stopped before the weights took it in, and last.ckpt keeps the last good "
                                f"ones: resume with --ckpt_path last and a lower model.lr, or clip gradients "
                                f"(trainer.gradient_clip_val)")

    def mean_over_ranks(self, x: Tensor) -> Tensor:
        """The mean of ``x`` over the processes of a distributed run (``x`` itself in one process), for state
        that is not a gradient, which DDP averages by itself."""
        return x if self._trainer is None else self.trainer.strategy.reduce(x, reduce_op="mean")

    def evaluate(self, episode: Episode) -> Tensor:
        """Query predictions in validation and test; ``predict`` unless the algorithm evaluates differently."""
        return self.predict(episode)

    def validation_step(self, episode: Episode, batch_idx: int) -> None:
        self.val_metric.update(self.score(self.evaluate(episode), episode))

    def test_step(self, episode: Episode, batch_idx: int) -> Tensor:
        predictions = self.evaluate(episode)
        self.test_metric.update(self.score(predictions, episode))
        return predictions  # for callbacks (lightning_meta.pictures)

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val", self.val_metric)

    def on_test_epoch_end(self) -> None:
        self._log_metric("test", self.test_metric)

    def _log_metric(self, stage: str, metric: EpisodeMean) -> None:
        mean, ci95 = metric.compute()  # already reduced over all ranks
        self.log(f"{stage}/{self.metric_name}", mean.float(), prog_bar=True)
        self.log(f"{stage}/{self.metric_name}_ci95", ci95.float())
        metric.reset()

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.optimizer == "adam":
            optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_decay_every is not None:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.lr_decay_every, gamma=hp.lr_decay)
        elif hp.lr_final is not None:
            steps, end = self.trainer.max_steps, hp.lr_final / hp.lr
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 + (end - 1) * min(t / steps, 1))
        else:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lightning_meta"] = {"algorithm": self.name}
