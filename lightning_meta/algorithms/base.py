"""The base of every algorithm: optimiser and schedule from config, metrics, logging, evaluation protocol.

An algorithm supplies only what is its own: ``meta_loss`` (an episode to a training loss, plus the outputs it
came from, normally the query predictions) and ``predict`` (query predictions of an episode, adapting first where
the method does). Optionally, ``episode_scores`` reports further per-episode scores beside the primary one (MANN's
accuracy by instance). Classification episodes are scored by accuracy in percent (``acc``), regression episodes
(``n_way`` 0) by mean squared error (``mse``); validation and test average each score over the episodes, with its
95% confidence interval.

Validation and test score ``evaluate``'s query predictions, which are ``predict``'s unless an algorithm evaluates
differently (the metric learners' transductive batch norm); an algorithm that is tested on the task it trains on
(MANN's sequences, ``evaluated_on_training_task``) is scored on ``meta_loss``'s outputs instead. What
``lightning_meta.pictures`` can draw of an algorithm beyond the episode, it declares by the interfaces at the end
of this module.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError, TrainingError
from lightning_meta.metrics import EpisodeMean, episode_accuracy, episode_mse

ALGORITHMS: dict[str, type[MetaLearner]] = {}
METRICS = {"classification": "acc", "regression": "mse"}  # the primary score of each kind of episode (data.task)


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
        lr_final: anneal the learning rate from ``lr`` to this over ``trainer.max_steps`` (None: don't).
        lr_anneal: how: ``linear``, or ``cosine``, lr_final + (lr − lr_final)(1 + cos(π t / max_steps)) / 2
            (MAML++'s schedule).
    """

    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]] = ("classification",)  # the kinds of episode (data.task) it can learn
    adapts_at_evaluation: ClassVar[bool] = False  # needs gradients on the support set in validation and test
    evaluated_on_training_task: ClassVar[bool] = False  # validation and test score meta_loss's outputs, not evaluate's
    trains_on: ClassVar[str] = "episodes"  # or "labelled": batches of labelled images (data.train_batches)

    def __init__(
        self,
        image_shape: tuple[int, ...],
        lr: float = 1e-3,
        optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        lr_decay_every: int | None = None,
        lr_decay: float = 0.5,
        lr_final: float | None = None,
        lr_anneal: Literal["linear", "cosine"] = "linear",
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
        # stage -> score name -> EpisodeMean, added as the scores arrive
        self.episode_means = nn.ModuleDict({"val": nn.ModuleDict(), "test": nn.ModuleDict()})
        self.metric_name = "acc"  # the primary score; at setup, the one of the data's task (METRICS)

    def validate_setup(self, data: Any, inference_mode: bool, max_steps: int) -> None:
        """Raises a ConfigError if this model cannot learn from ``data`` with this trainer; ``train.py`` calls it
        before anything is written, and ``setup`` again for runs started from Python."""
        task = getattr(data, "task", "classification")
        if task not in self.tasks:
            raise ConfigError(f"{type(self).__name__} learns {' or '.join(self.tasks)} episodes, but the data "
                              f"gives {task} episodes; choose another data module or algorithm")
        batches = getattr(data, "train_batches", "episodes")
        if batches != self.trains_on:
            how = ("pretrains on batches of labelled images from all training classes" if self.trains_on == "labelled"
                   else "trains on episodes")
            raise ConfigError(f"{type(self).__name__} {how}, but data.train_batches is {batches!r}; set "
                              f"data.train_batches: {self.trains_on}")
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

    def bind_data(self, data: Any, training: bool) -> None:
        """Sizes what depends on the data beyond its input shape, where the model has such parts (the pretraining
        family's classifier, one output per training class), and checks it against ``data`` for ``training``.
        ``train.py`` calls it once the data is set up, before a checkpoint is read; ``setup`` calls it again for
        runs started from Python. Nothing by default."""

    def setup(self, stage: str) -> None:
        data = None if self.trainer is None else self.trainer.datamodule
        if data is not None:
            self.validate_setup(data, self.trainer.test_loop.inference_mode, self.trainer.max_steps)
            self.bind_data(data, training=stage == "fit")
            self.metric_name = METRICS[getattr(data, "task", "classification")]

    def score(self, predictions: Tensor, episode: Episode) -> Tensor:
        """The primary per-episode score [T] of query predictions: accuracy in percent, or mean squared error for
        regression."""
        if episode.n_way:
            return episode_accuracy(predictions, episode.query_labels)
        return episode_mse(predictions, episode.query_labels)

    @abstractmethod
    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """The training loss of a task batch, and the outputs it came from (``episode_scores`` scores them): the
        query predictions, scores [T, N*Q, N] (higher is more likely) or values [T, Q, 1] for regression, unless the
        algorithm scores its own outputs. (An algorithm that ``trains_on`` labelled batches gets one of those.)"""

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

    def episode_scores(self, episode: Episode, outputs: Tensor) -> dict[str, Tensor]:
        """The per-episode scores [T] of ``outputs`` by name: the primary score ``metric_name`` (``score`` of the
        query predictions by default) and any further ones an algorithm reports by overriding this. ``outputs`` are
        ``meta_loss``'s in training, where the primary score is logged as ``train/{metric_name}``, and the evaluated
        ones in validation and test (``evaluate``'s, or ``meta_loss``'s where ``evaluated_on_training_task``), where
        every score is averaged over the episodes and logged as ``{stage}/{name}`` with its 95% confidence interval
        ``{stage}/{name}_ci95``. A score may be left out of a batch whose episodes do not have it."""
        return {self.metric_name: self.score(outputs, episode)}

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        loss, outputs = self.meta_loss(episode)
        score = self.episode_scores(episode, outputs.detach())[self.metric_name].mean()
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
        """Query predictions in validation, test and ``lightning_meta.predict``; ``predict`` unless the algorithm
        evaluates differently."""
        return self.predict(episode)

    def validation_step(self, episode: Episode, batch_idx: int) -> None:
        self.evaluation_step("val", episode)

    def test_step(self, episode: Episode, batch_idx: int) -> Tensor | None:
        return self.evaluation_step("test", episode)  # the query predictions, for callbacks (lightning_meta.pictures)

    def evaluation_step(self, stage: str, episode: Episode) -> Tensor | None:
        """Adds the batch's ``episode_scores`` to the stage's means; returns its query predictions (None where the
        outputs scored are ``meta_loss``'s)."""
        if self.evaluated_on_training_task:
            outputs, predictions = self.meta_loss(episode)[1], None
        else:
            outputs = predictions = self.evaluate(episode)
        means = self.episode_means[stage]
        for name, scores in self.episode_scores(episode, outputs).items():
            if name not in means:
                means[name] = EpisodeMean().to(scores.device)
            means[name].update(scores)
        return predictions

    def on_validation_epoch_end(self) -> None:
        self.log_scores("val")

    def on_test_epoch_end(self) -> None:
        self.log_scores("test")

    def log_scores(self, stage: str) -> None:
        """Logs the mean of every score of the stage, and its 95% confidence interval, then starts them afresh."""
        for name, metric in self.episode_means[stage].items():
            if not metric.update_count:
                continue
            mean, ci95 = metric.compute()  # already reduced over all ranks
            self.log(f"{stage}/{name}", mean.float(), prog_bar=name == self.metric_name)
            self.log(f"{stage}/{name}_ci95", ci95.float())
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

            def factor(t: int) -> float:  # the learning rate at step t over lr
                progress = min(t / steps, 1)
                if hp.lr_anneal == "cosine":
                    return end + (1 - end) * (1 + math.cos(math.pi * progress)) / 2
                return 1 + (end - 1) * progress

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        else:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lightning_meta"] = {"algorithm": self.name}


class EmbeddingPictures(ABC):
    """An algorithm that embeds support and query examples in one space (the metric learners):
    ``lightning_meta.pictures`` shows the first test task's embeddings in TensorBoard's projector."""

    @abstractmethod
    def test_embeddings(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Support and query embeddings [1, NK, *z] and [1, NQ, *z] of a one-task episode, as in evaluation."""


class InnerStepPictures(ABC):
    """An algorithm that adapts to a task by inner steps (MAML, first-order MAML, Reptile): ``lightning_meta.pictures``
    plots the first test batch's query accuracy against the number of steps."""

    @property
    @abstractmethod
    def eval_steps(self) -> int:
        """Inner steps when validating and testing."""

    @abstractmethod
    def predict_after(self, episode: Episode, steps: int) -> Tensor:
        """Query predictions after ``steps`` of the evaluation's inner steps."""


class InstancePictures(ABC):
    """An algorithm whose ``episode_scores`` include ``acc_instance_n``, the accuracy on the n-th example of a class
    in a sequence (MANN): ``lightning_meta.pictures`` plots the test's against n."""

    instances: ClassVar[tuple[int, ...]]  # the n it reports
