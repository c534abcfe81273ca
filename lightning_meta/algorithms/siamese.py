"""Siamese network (Koch, Zemel & Salakhutdinov, "Siamese Neural Networks for One-shot Image Recognition",
ICML Deep Learning Workshop 2015).

Twin embeddings f_θ with shared weights are compared by a weighted L1 distance; the probability that two
images show the same character is

    p(x₁, x₂) = σ(Σ_j α_j |f_θ(x₁)_j − f_θ(x₂)_j| + b)

trained as verification: binary cross-entropy on as many same as different pairs, here drawn from each training
episode (support and query alike), with random affine distortions of the training images (``data.train_transform``).
One-shot prediction is the class of the support image with the highest p(x̂, x_i); with K shots, p is averaged
over the class's support images.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import register
from lightning_meta.algorithms.metric import MetricLearner, logsumexp_by_class
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError


def verification_pairs(labels: Tensor, generators: list[torch.Generator], n_way: int) -> tuple[Tensor, Tensor, Tensor]:
    """Balanced verification pairs among the examples of each task: every task gets P same-class and P
    different-class pairs of distinct examples, drawn uniformly without replacement from its own generator, with P
    the smaller of the two counts available. A training episode has M / N examples of each of its N classes, so P
    follows from the shapes alone (no value is read back from the device).

    Args:
        labels: [T, M] the class of each example, M / N examples of each class.
        generators: one CPU generator per task (``Episode.generator``), so that a task gets the same pairs in any
            batch, on any rank and after a resume.
    Returns:
        first [T, 2P], second [T, 2P] (example indices) and same [T, 2P] (True for a same-class pair).
    """
    M = labels.shape[1]
    first, second = torch.triu_indices(M, M, offset=1, device=labels.device)  # every unordered pair, [M(M-1)/2]
    same = labels[:, first] == labels[:, second]  # [T, M(M-1)/2]
    pairs, per_class = M * (M - 1) // 2, M // n_way
    same_pairs = n_way * per_class * (per_class - 1) // 2
    P = min(same_pairs, pairs - same_pairs)
    # a random order of the pairs of each task, from the task's own generator
    keys = torch.stack([torch.rand(first.shape[0], generator=g) for g in generators]).to(labels.device)
    chosen = torch.cat([keys.masked_fill(~same, -1).topk(P, dim=1).indices,  # P same-class pairs
                        keys.masked_fill(same, -1).topk(P, dim=1).indices], dim=1)  # P different-class pairs
    return first[chosen], second[chosen], same.gather(1, chosen)


@register
class Siamese(MetricLearner):
    """Siamese network. Arguments: see :class:`MetricLearner`; ``backbone: koch`` (``hidden: 4096``) is the
    paper's network on 105x105 images, ``conv4`` the small one on 28x28."""

    name = "siamese"
    transductive_inference = False  # a learned module compares the examples, not their embeddings

    def __init__(self, image_shape: tuple[int, ...], backbone: str = "conv4", hidden: int = 64, **kwargs: Any) -> None:
        super().__init__(image_shape, backbone=backbone, hidden=hidden, **kwargs)
        if len(self.z_shape) != 1:
            raise ConfigError(f"the Siamese network compares embedding vectors, but backbone {backbone!r} gives "
                              f"feature maps {self.z_shape}; choose conv4 or koch")
        self.alpha = nn.Linear(self.z_shape[0], 1)  # the weights α_j of the L1 distance, and the bias b

    def logit(self, z1: Tensor, z2: Tensor) -> Tensor:
        """σ⁻¹(p(x₁, x₂)) for embeddings [..., D] -> [...]."""
        return self.alpha((z1 - z2).abs()).squeeze(-1)

    def one_shot_scores(self, z_support: Tensor, z_query: Tensor, labels: Tensor, n_way: int) -> Tensor:
        """The log of the mean p(x̂, x_i) over the support images x_i of each class: [T, NQ, N]. (The log keeps
        p's that round to 1 apart, so that the argmax rule never meets a tie the float cannot resolve.)"""
        log_p = F.logsigmoid(self.logit(z_query[:, :, None], z_support[:, None]))  # [T, NQ, NK]
        shots = F.one_hot(labels, n_way).sum(1)  # K of each class, [T, N]
        return logsumexp_by_class(log_p, labels, n_way) - shots.log()[:, None]

    # the scores are log mean verification probabilities p(x̂, x_i), not log-probabilities of a class: their softmax
    # (the base class's ``probabilities``) is those p normalised over the classes
    calibrated = False

    def predict(self, episode: Episode) -> Tensor:
        z_support, z_query = self.embed(episode)  # [T, NK, D], [T, NQ, D]
        return self.one_shot_scores(z_support, z_query, episode.support_labels, episode.n_way)

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        z_support, z_query = self.embed(episode)
        z = torch.cat([z_support, z_query], dim=1)  # every labelled image of the episode, [T, M, D]
        labels = torch.cat([episode.support_labels, episode.query_labels], dim=1)
        generators = [episode.generator(t, "pairs") for t in range(z.shape[0])]
        first, second, same = verification_pairs(labels, generators, episode.n_way)
        task = torch.arange(z.shape[0], device=z.device)[:, None]
        logits = self.logit(z[task, first], z[task, second])  # [T, 2P]
        loss = F.binary_cross_entropy_with_logits(logits, same.to(logits.dtype))
        scores = self.one_shot_scores(z_support, z_query, episode.support_labels, episode.n_way)
        return loss, scores
