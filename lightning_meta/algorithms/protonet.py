"""Prototypical Networks (Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017).

Each class is represented by the mean of its embedded support examples, its prototype ``c_k``; a query is
classified by a softmax over negative squared Euclidean distances to the prototypes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_meta.algorithms.base import MetaLearner, register
from lightning_meta.backbones import build_backbone
from lightning_meta.episode import Episode


@register
class ProtoNet(MetaLearner):
    """Prototypical Network.

    Args:
        image_shape: input shape, e.g. (1, 28, 28).
        backbone: embedding network f_θ (``conv4``: 64-d embeddings on 28x28 Omniglot).
        hidden: filters (or units) of the backbone.
        **kwargs: optimiser settings, see :class:`MetaLearner`.
    """

    name = "protonet"

    def __init__(self, image_shape: tuple[int, ...], backbone: str = "conv4", hidden: int = 64, **kwargs: Any) -> None:
        super().__init__(image_shape, **kwargs)
        self.f_theta = build_backbone(backbone, image_shape, hidden=hidden)

    def embed(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """f_θ of support and query in one pass (batch norm sees the whole episode, as in the paper's code)."""
        NK = episode.support.shape[1]
        x = torch.cat([episode.support, episode.query], dim=1)  # [T, NK+NQ, *x]
        z = self.f_theta(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # [T, NK+NQ, D]
        return z[:, :NK], z[:, NK:]

    def predict(self, episode: Episode) -> Tensor:
        z_support, z_query = self.embed(episode)  # [T, NK, D], [T, NQ, D]
        y = F.one_hot(episode.support_labels, episode.n_way).to(z_support.dtype)  # [T, NK, N]
        prototypes = y.transpose(1, 2) @ z_support / y.sum(1)[..., None]  # c_k, [T, N, D]
        distances = (z_query[:, :, None] - prototypes[:, None]).pow(2).sum(-1)  # d(f(x), c_k), [T, NQ, N]
        return -distances

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        logits = self.predict(episode)  # log p(y = k | x) up to a constant
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten())
        return loss, logits
