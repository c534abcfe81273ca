"""Prototypical Networks (Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017).

Each class is represented by the mean of its embedded support examples, its prototype ``c_k``; a query is
classified by a softmax over negative squared Euclidean distances to the prototypes.
"""

from __future__ import annotations

from torch import Tensor

from lightning_meta.algorithms.base import register
from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.algorithms.prototypes import class_means
from lightning_meta.episode import Episode


@register
class ProtoNet(MetricLearner):
    """Prototypical Network: f_θ is ``backbone`` (``conv4``: 64-d embeddings on 28x28 Omniglot); trained by the
    negative log-likelihood of the true class. Arguments: see :class:`MetricLearner`."""

    name = "protonet"

    def predict(self, episode: Episode) -> Tensor:
        z_support, z_query = self.embed(episode)  # [T, NK, D], [T, NQ, D]
        prototypes = class_means(z_support, episode.support_labels, episode.n_way)  # c_k, [T, N, D]
        distances = (z_query[:, :, None] - prototypes[:, None]).pow(2).sum(-1)  # d(f(x), c_k), [T, NQ, N]
        return -distances
