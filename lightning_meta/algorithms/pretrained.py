"""The base of the pretrain-and-evaluate family (Baseline and Baseline++, Chen et al. 2019; SimpleShot, Wang et al.
2019): an embedding f_θ and a classifier over all C training classes are trained by cross-entropy on ordinary
labelled batches, not episodes; to evaluate, the classifier is set aside, f_θ is frozen, and each episode is
classified from its support set's embeddings by the method's own rule (``predict``).

How this fits the Lightning loop (docs/algorithms.md, "The pretrain-and-evaluate family"): a training step is one
batch of ``data.batch_size`` labelled images (``data.train_batches: labelled``, ``lightning_meta.data.labelled``);
validation and test are episodic, on the same fixed episodes as every other algorithm, so the best checkpoint is
chosen by few-shot validation accuracy; resuming is exact, batch ``g`` being a pure function of the seed and ``g``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.data.labelled import LabelledBatch
from lightning_meta.errors import ConfigError
from lightning_meta.metrics import episode_accuracy


def cosine_scores(z: Tensor, w: Tensor, scale: float) -> Tensor:
    """Baseline++'s class scores s · cos(z_i, w_c): features z [..., M, D], class weights w [..., C, D] ->
    [..., M, C]."""
    return scale * F.normalize(z, dim=-1) @ F.normalize(w, dim=-1).transpose(-1, -2)


def chen_scale(classes: int) -> float:
    """The scale s of Chen et al.'s cosine classifier: 2 for up to 200 classes, 10 for more (their code)."""
    return 2.0 if classes <= 200 else 10.0


class CosineClassifier(nn.Module):
    """s · cos(z, w_c) for every class c (Baseline++); w initialised as ``nn.Linear``'s weight."""

    def __init__(self, features: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.Linear(features, classes, bias=False).weight.detach())  # [C, D]
        self.scale = scale

    def forward(self, z: Tensor) -> Tensor:  # [B, D] -> [B, C]
        return cosine_scores(z, self.weight, self.scale)


class PretrainedLearner(MetricLearner):
    """f_θ and a classifier over the training classes, pretrained on labelled batches; ``predict`` classifies an
    episode from f_θ's embeddings (running batch-norm statistics by default: the backbone is frozen).

    Args:
        image_shape, backbone, hidden, batch_norm: see :class:`MetricLearner`.
        classifier: the pretraining classifier: ``linear`` (W z + b) or ``cosine`` (s · cos(z, w_c), Baseline++).
        scale: s of the cosine classifier (None: Chen et al.'s, 2 for up to 200 classes and 10 above).
        num_classes: C, the training classes (None: the data's, set when training starts; a checkpoint keeps it).
        **kwargs: optimiser settings, see :class:`MetaLearner`.
    """

    trains_on = "labelled"

    def __init__(self, image_shape: tuple[int, ...], backbone: str = "conv4", hidden: int = 64,
                 batch_norm: Literal["running", "transductive"] = "running",
                 classifier: Literal["linear", "cosine"] = "linear", scale: float | None = None,
                 num_classes: int | None = None, **kwargs: Any) -> None:
        super().__init__(image_shape, backbone=backbone, hidden=hidden, batch_norm=batch_norm, **kwargs)
        if classifier not in ("linear", "cosine"):
            raise ConfigError(f"model.classifier must be 'linear' or 'cosine' (got {classifier!r})")
        if scale is not None and scale <= 0:
            raise ConfigError(f"model.scale must be positive or null (got {scale}); null takes Chen et al.'s")
        self.feature_dim = math.prod(self.z_shape)  # D
        self.classifier: nn.Module | None = None if num_classes is None else self.build_classifier(num_classes)

    def build_classifier(self, classes: int) -> nn.Module:
        if self.hparams.classifier == "cosine":
            return CosineClassifier(self.feature_dim, classes, self.hparams.scale or chen_scale(classes))
        linear = nn.Linear(self.feature_dim, classes)
        nn.init.zeros_(linear.bias)  # as Chen et al.'s code
        return linear

    def bind_data(self, data: Any, training: bool) -> None:
        classes = data.training_classes()
        if self.classifier is None:
            self.hparams.num_classes = classes
            self.classifier = self.build_classifier(classes)
        elif training and self.hparams.num_classes != classes:
            raise ConfigError(f"model.num_classes is {self.hparams.num_classes} but the training split has {classes} "
                              f"classes; set model.num_classes: {classes} (or null, to take the data's)")

    def meta_loss(self, batch: LabelledBatch) -> tuple[Tensor, Tensor]:
        """Pretraining: the cross-entropy of the classifier over all training classes on a labelled batch, and
        its scores [1, B, C]."""
        z = self.f_theta(batch.images).flatten(1)  # [B, D]
        logits = self.classifier(z)  # [B, C]
        return F.cross_entropy(logits, batch.labels), logits[None]

    def episode_scores(self, episode: Any, outputs: Tensor) -> dict[str, Tensor]:
        if isinstance(episode, LabelledBatch):  # training: accuracy over the training classes
            return {self.metric_name: episode_accuracy(outputs, episode.labels[None])}
        return super().episode_scores(episode, outputs)
