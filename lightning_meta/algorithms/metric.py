"""The base of the metric-based algorithms: one embedding network f_θ for support and query, and a rule that
compares each query with the support set. Nothing is adapted at test time; the comparison is the classifier.

Batch norm trains on the statistics of each training batch. In evaluation, ``batch_norm: running`` (the default)
normalises with the running averages gathered in training, so each query is classified on its own;
``batch_norm: transductive`` normalises each episode with its own statistics (support and queries), as in
training: the Relation Network's code never leaves training mode, so its published numbers are transductive.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_meta.algorithms.base import EmbeddingPictures, MetaLearner
from lightning_meta.backbones import batch_statistics, build_backbone
from lightning_meta.episode import Episode


def logsumexp_by_class(values: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """log Σ_{i: y_i = n} exp(values_i) for each class n: values [T, NQ, NK] over the support examples, labels [T, NK]
    -> [T, NQ, N]."""
    in_class = F.one_hot(labels, n_way).transpose(1, 2).bool()  # [T, N, NK]
    return values[:, :, None].masked_fill(~in_class[:, None], float("-inf")).logsumexp(dim=-1)


def class_means(z: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """The mean of each class's examples (ProtoNet's prototypes c_k, SimpleShot's centroids): z [T, NK, D],
    labels [T, NK] -> [T, N, D]."""
    y = F.one_hot(labels, n_way).to(z.dtype)  # [T, NK, N]
    return y.transpose(1, 2) @ z / y.sum(1)[..., None]


class MetricLearner(MetaLearner, EmbeddingPictures):
    """An embedding f_θ and ``predict`` scores; by default trained by the negative log-likelihood of the true
    class, the scores being log-probabilities up to a constant.

    Args:
        image_shape: input shape, e.g. (1, 28, 28).
        backbone: the embedding network f_θ, by name (see ``lightning_meta.backbones``).
        hidden: filters (or units) of the backbone.
        batch_norm: statistics of batch norm in evaluation, ``running`` or ``transductive`` (see the module
            docstring).
        **kwargs: optimiser settings, see :class:`MetaLearner`.
    """

    def __init__(self, image_shape: tuple[int, ...], backbone: str = "conv4", hidden: int = 64,
                 batch_norm: Literal["running", "transductive"] = "running", **kwargs: Any) -> None:
        super().__init__(image_shape, **kwargs)
        self.f_theta = build_backbone(backbone, image_shape, hidden=hidden)
        with torch.no_grad():  # in eval mode, so that batch norm's running statistics are untouched
            self.z_shape = tuple(self.f_theta.eval()(torch.zeros(1, *image_shape)).shape[1:])  # [*z] of one input
        self.f_theta.train()

    def embed(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """f_θ of support and query in one pass (batch norm sees the whole episode; Sung et al.'s code
        embeds support and query in separate calls, a departure docs/algorithms.md names):
        [T, NK, *z] and [T, NQ, *z], where z is a vector or a feature map."""
        NK = episode.support.shape[1]
        x = torch.cat([episode.support, episode.query], dim=1)  # [T, NK+NQ, *x]
        z = self.f_theta(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # [T, NK+NQ, *z]
        return z[:, :NK], z[:, NK:]

    def test_embeddings(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """``embed`` of a one-task episode with batch norm as in evaluation (for TensorBoard's projector)."""
        if self.hparams.batch_norm == "running":
            return self.embed(episode)
        with batch_statistics(self):
            return self.embed(episode)

    def evaluate(self, episode: Episode) -> Tensor:
        if self.hparams.batch_norm == "running":
            return self.predict(episode)
        with batch_statistics(self):  # one episode at a time, so that its statistics are its own
            return torch.cat([self.predict(task) for task in episode.tasks()])

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        logits = self.predict(episode)  # [T, NQ, N], log p(y = k | x) up to a constant
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten())
        return loss, logits
