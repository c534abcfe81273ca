"""Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019).

Pretraining: f_θ and a classifier over all training classes, by cross-entropy on labelled batches; Baseline's
classifier is linear, W z + b, Baseline++'s scores each class by the scaled cosine s · cos(z, w_c). To classify an
episode, f_θ is frozen and a fresh classifier of the same kind, N classes wide, is fitted on the support features
alone: 100 epochs over the support set in random mini-batches of 4, SGD with learning rate 0.01, momentum 0.9,
dampening 0.9 and weight decay 0.001 (Chen et al.'s code); then it scores the queries.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_meta.algorithms.base import register
from lightning_meta.algorithms.pretrained import PretrainedLearner, chen_scale, cosine_scores
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError
from lightning_meta.precision import autocast_off


@register
class Baseline(PretrainedLearner):
    """Baseline (``classifier: linear``) or Baseline++ (``classifier: cosine``, :class:`BaselinePlusPlus`).

    Args:
        head_epochs: passes over the support set when fitting an episode's classifier (Chen et al.: 100).
        head_batch: support examples per SGD step of that fit (4).
        head_lr: its learning rate (0.01); momentum 0.9, dampening 0.9 and weight decay 0.001 as theirs.
        Others: see :class:`PretrainedLearner`.
    """

    name = "baseline"
    adapts_at_evaluation = True  # fits a classifier on every episode's support set

    def __init__(self, image_shape: tuple[int, ...], classifier: Literal["linear", "cosine"] = "linear",
                 head_epochs: int = 100, head_batch: int = 4, head_lr: float = 0.01, **kwargs: Any) -> None:
        super().__init__(image_shape, classifier=classifier, **kwargs)
        if head_epochs < 1 or head_batch < 1 or head_lr <= 0:
            raise ConfigError(f"model.head_epochs and model.head_batch must be at least 1 and model.head_lr positive "
                              f"(got {head_epochs}, {head_batch}, {head_lr}); Chen et al.'s are 100, 4 and 0.01")

    def head_scores(self, z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """The episode classifier's scores [T, M, N] of features z [T, M, D]: W z + b, or s · cos(z, w_n)."""
        if self.hparams.classifier == "cosine":
            return cosine_scores(z, weight, self.hparams.scale or chen_scale(weight.shape[1]))
        return z @ weight.transpose(1, 2) + bias[:, None]

    def head_init(self, episode: Episode, features: int, ways: int) -> tuple[Tensor, Tensor, Tensor]:
        """Each task's initial classifier, as ``nn.Linear(D, N)`` draws it (uniform in ±1/√D), [T, N, D] and
        [T, N], and its order of the support set in every epoch [T, epochs, NK], all from the task's own
        generator (``Episode.generator``), so that a task is fitted the same in any batch."""
        bound, shots = 1 / math.sqrt(features), episode.support.shape[1]
        weights, biases, orders = [], [], []
        for t in range(episode.support.shape[0]):
            g = episode.generator(t, "baseline head")
            weights.append(torch.rand(ways, features, generator=g) * 2 * bound - bound)
            biases.append(torch.rand(ways, generator=g) * 2 * bound - bound)
            orders.append(torch.rand(self.hparams.head_epochs, shots, generator=g).argsort(-1))
        device = episode.support.device
        return torch.stack(weights).to(device), torch.stack(biases).to(device), torch.stack(orders).to(device)

    def fit_head(self, z_support: Tensor, labels: Tensor, episode: Episode) -> tuple[Tensor, Tensor]:
        """The classifier fitted on the support features z_support [T, NK, D] with labels [T, NK]: one SGD run per
        task, all tasks in one batched run (the loss is the sum of the tasks' losses, so each task's weights get
        its own gradient)."""
        T, NK, D = z_support.shape
        weight, bias, orders = self.head_init(episode, D, episode.n_way)
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        sgd = torch.optim.SGD([weight, bias], lr=self.hparams.head_lr, momentum=0.9, dampening=0.9, weight_decay=1e-3)
        with torch.enable_grad():
            for epoch in range(self.hparams.head_epochs):
                for start in range(0, NK, self.hparams.head_batch):
                    chosen = orders[:, epoch, start : start + self.hparams.head_batch]  # [T, b]
                    z = z_support.gather(1, chosen[..., None].expand(-1, -1, D))  # [T, b, D]
                    y = labels.gather(1, chosen)  # [T, b]
                    scores = self.head_scores(z, weight, bias)  # [T, b, N]
                    loss = F.cross_entropy(scores.flatten(0, 1), y.flatten(), reduction="sum") / chosen.shape[1]
                    sgd.zero_grad()
                    loss.backward()
                    sgd.step()
        return weight.detach(), bias.detach()

    def predict(self, episode: Episode) -> Tensor:
        z_support, z_query = self.features(episode)  # f_θ frozen: [T, NK, D], [T, NQ, D]
        with autocast_off(z_query.device.type):  # the episode's classifier is fitted and applied in float32
            weight, bias = self.fit_head(z_support.float(), episode.support_labels, episode)
            return self.head_scores(z_query.float(), weight, bias)  # [T, NQ, N]


@register
class BaselinePlusPlus(Baseline):
    """Baseline++: Baseline with cosine classifiers, in pretraining and on every episode. Arguments: see
    :class:`Baseline`."""

    name = "baseline_pp"

    def __init__(self, image_shape: tuple[int, ...], classifier: Literal["linear", "cosine"] = "cosine",
                 **kwargs: Any) -> None:
        super().__init__(image_shape, classifier=classifier, **kwargs)
