"""SimpleShot (Wang, Chao, Weinberger & van der Maaten, "SimpleShot: Revisiting Nearest-Neighbor Classification for
Few-Shot Learning", arXiv:1911.04623, 2019).

f_θ is pretrained with a linear classifier over all training classes (cross-entropy on labelled batches). An
episode is classified by the nearest class centroid, in Euclidean distance, after one of three feature
transformations: UN (the features unchanged), L2N (L2-normalised) or CL2N (centred by x̄, the mean feature of the
training images, then L2-normalised: the paper's best). A centroid is the mean of a class's transformed support
features, not normalised again (the authors' code).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_meta.algorithms.base import register
from lightning_meta.algorithms.prototypes import class_means
from lightning_meta.algorithms.pretrained import PretrainedLearner
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError

MEAN_CHUNK = 512  # training images per forward pass when x̄ is computed


@register
class SimpleShot(PretrainedLearner):
    """SimpleShot: nearest centroid on pretrained features.

    Args:
        features: the feature transformation, ``UN``, ``L2N`` or ``CL2N``.
        Others: see :class:`PretrainedLearner` (the pretraining classifier is linear, as the paper's).

    x̄ is computed with the current weights at the start of every validation and test (f_θ in evaluation mode,
    over every training image, without augmentation) and kept in the checkpoint as the buffer ``train_mean``, so
    that a checkpoint classifies new images without the training data.
    """

    name = "simpleshot"

    def __init__(self, image_shape: tuple[int, ...], features: Literal["UN", "L2N", "CL2N"] = "CL2N",
                 **kwargs: Any) -> None:
        super().__init__(image_shape, **kwargs)
        if features not in ("UN", "L2N", "CL2N"):
            raise ConfigError(f"model.features must be UN, L2N or CL2N (got {features!r})")
        self.register_buffer("train_mean", torch.zeros(self.feature_dim))  # x̄ [D]

    def on_validation_start(self) -> None:
        self.update_train_mean()

    def on_test_start(self) -> None:
        self.update_train_mean()

    @torch.no_grad()
    def update_train_mean(self) -> None:
        """x̄ = the mean of f_θ(x) over the training images x of the data module (CL2N only)."""
        if self.hparams.features != "CL2N":
            return
        total = torch.zeros(self.feature_dim, dtype=torch.float64, device=self.train_mean.device)
        count = 0
        for images in self.trainer.datamodule.store_inputs("train", self.train_mean.device, MEAN_CHUNK):
            total += self.f_theta(images).flatten(1).double().sum(0)
            count += len(images)
        self.train_mean.copy_(total / count)

    def transform(self, z: Tensor) -> Tensor:
        """UN, L2N or CL2N of features z [..., D]."""
        if self.hparams.features == "CL2N":
            z = z - self.train_mean
        return z if self.hparams.features == "UN" else F.normalize(z, dim=-1)

    def features(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """The transformed features of support and query, [T, NK, D] and [T, NQ, D] (f_θ frozen)."""
        z_support, z_query = super().features(episode)
        return self.transform(z_support.float()), self.transform(z_query.float())

    def predict(self, episode: Episode) -> Tensor:
        z_support, z_query = self.features(episode)  # [T, NK, D], [T, NQ, D]
        centroids = class_means(z_support, episode.support_labels, episode.n_way)  # [T, N, D]
        return -torch.cdist(z_query, centroids)  # minus the Euclidean distance, [T, NQ, N]
