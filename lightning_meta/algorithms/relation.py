"""Relation Network (Sung, Yang, Zhang, Xiang, Torr & Hospedales, "Learning to Compare: Relation Network for
Few-Shot Learning", CVPR 2018).

The embedding f_φ gives feature maps; a class's feature map is the sum over its support examples. The relation
module g_φ reads a class feature map concatenated with a query's and scores their relation in [0, 1]:

    r_{i,j} = g_φ(C(Σ_{k} f_φ(x_{j,k}), f_φ(x_i)))

trained by mean squared error against 1[y_i = j].
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import register
from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.backbones import conv_block
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError


class RelationModule(nn.Module):
    """g_φ on a pair of feature maps C(a, b) [2C, H, W]: two blocks of 3x3 conv, batch norm, ReLU and 2x2 max-pool,
    then fully connected ReLU (8 units) and fully connected sigmoid (1).

    The first convolution is linear in its input, so on a concatenated pair it splits into its two halves:
    W * C(a, b) + β = (W_a * a + β) + W_b * b. Each half runs once per class and once per query rather than once
    per (query, class) pair; the sum is the same pre-activation, then batch norm and the rest run on every pair.
    """

    def __init__(self, z_shape: tuple[int, ...], hidden: int = 64, fc_hidden: int = 8) -> None:
        super().__init__()
        channels, height, width = z_shape
        if min(height, width) < 4:
            raise ConfigError(f"the relation module pools the {height}x{width} feature maps twice and needs at least "
                              f"4x4; raise data.image_size or use backbone conv4_maps")
        self.block1, self.block2 = conv_block(2 * channels, hidden), conv_block(hidden, hidden)
        features = hidden * (height // 2 // 2) * (width // 2 // 2)  # 64 at 28x28 (5x5 maps)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(features, fc_hidden), nn.ReLU(inplace=True),
                                nn.Linear(fc_hidden, 1), nn.Sigmoid())

    def forward(self, z_class: Tensor, z_query: Tensor) -> Tensor:
        """Relation scores of every query with every class: [T, N, C, H, W], [T, NQ, C, H, W] -> [T, NQ, N]."""
        (T, N), NQ = z_class.shape[:2], z_query.shape[1]
        conv = self.block1[0]
        W_a, W_b = conv.weight.split(z_class.shape[2], dim=1)  # [hidden, C, 3, 3] each
        a = F.conv2d(z_class.flatten(0, 1), W_a, conv.bias, padding=conv.padding)  # [TN, hidden, H, W]
        b = F.conv2d(z_query.flatten(0, 1), W_b, padding=conv.padding)  # [TNQ, hidden, H, W]
        pairs = a.unflatten(0, (T, 1, N)) + b.unflatten(0, (T, NQ, 1))  # [T, NQ, N, hidden, H, W]
        h = self.block2(self.block1[1:](pairs.flatten(0, 2)))
        return self.fc(h).view(T, NQ, N)


@register
class RelationNetwork(MetricLearner):
    """Relation Network.

    Args:
        image_shape: input shape, e.g. (1, 28, 28).
        backbone: the embedding f_φ; it must give feature maps (``conv4_maps``: 64 x 5 x 5 at 28x28).
        hidden: filters of the embedding and of the relation module.
        fc_hidden: units of the relation module's hidden fully connected layer.
        **kwargs: optimiser settings, see :class:`MetricLearner`.
    """

    name = "relation"
    transductive_inference = False  # a learned module compares the examples, not their embeddings

    def __init__(self, image_shape: tuple[int, ...], backbone: str = "conv4_maps", hidden: int = 64,
                 fc_hidden: int = 8, **kwargs: Any) -> None:
        super().__init__(image_shape, backbone=backbone, hidden=hidden, **kwargs)
        if len(self.z_shape) != 3:
            raise ConfigError(f"the Relation Network compares feature maps, but backbone {backbone!r} gives vectors "
                              f"{self.z_shape}; choose conv4_maps")
        self.g_phi = RelationModule(self.z_shape, hidden, fc_hidden)

    def class_features(self, z_support: Tensor, labels: Tensor, n_way: int) -> Tensor:
        """The sum of each class's support feature maps: [T, NK, C, H, W] -> [T, N, C, H, W]."""
        y = F.one_hot(labels, n_way).to(z_support.dtype)  # [T, NK, N]
        return torch.einsum("tsn,tschw->tnchw", y, z_support)

    calibrated = False  # relation scores are regressed to 1 or 0 one class at a time, not a distribution

    def probabilities(self, scores: Tensor) -> Tensor:
        """The relation scores normalised to sum to 1 over the classes."""
        return scores.float().clamp_min(0) / scores.float().clamp_min(0).sum(-1, keepdim=True).clamp_min(1e-12)

    def check_task(self, shots: list[int]) -> None:
        super().check_task(shots)
        if len(set(shots)) > 1:
            raise ConfigError(f"the Relation Network sums the feature maps of each class's support images, so every "
                              f"class needs the same number of them (got {shots}); give each class folder as many")

    def predict(self, episode: Episode) -> Tensor:
        z_support, z_query = self.embed(episode)  # [T, NK, C, H, W], [T, NQ, C, H, W]
        z_class = self.class_features(z_support, episode.support_labels, episode.n_way)  # [T, N, C, H, W]
        return self.g_phi(z_class, z_query)  # relation scores r_{i,j} = g_φ(C(class j, query i)) in [0, 1]

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        relation_scores = self.predict(episode)  # [T, NQ, N]
        targets = F.one_hot(episode.query_labels, episode.n_way).to(relation_scores.dtype)  # 1[y_i = j]
        return F.mse_loss(relation_scores, targets), relation_scores
