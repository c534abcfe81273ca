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


def relation_module(z_shape: tuple[int, ...], hidden: int = 64, fc_hidden: int = 8) -> nn.Sequential:
    """g_φ on a pair of feature maps [2C, H, W]: two blocks of 3x3 conv, batch norm, ReLU and 2x2 max-pool, then
    fully connected ReLU (8 units) and fully connected sigmoid (1)."""
    channels, height, width = z_shape
    if min(height, width) < 4:
        raise ConfigError(f"the relation module pools the {height}x{width} feature maps twice and needs at least 4x4; "
                          f"raise data.image_size or use backbone conv4_maps")
    convs = nn.Sequential(conv_block(2 * channels, hidden), conv_block(hidden, hidden), nn.Flatten())
    features = hidden * (height // 2 // 2) * (width // 2 // 2)  # 64 at 28x28 (5x5 maps)
    return nn.Sequential(*convs, nn.Linear(features, fc_hidden), nn.ReLU(inplace=True), nn.Linear(fc_hidden, 1),
                         nn.Sigmoid())


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

    def __init__(self, image_shape: tuple[int, ...], backbone: str = "conv4_maps", hidden: int = 64,
                 fc_hidden: int = 8, **kwargs: Any) -> None:
        super().__init__(image_shape, backbone=backbone, hidden=hidden, **kwargs)
        if len(self.z_shape) != 3:
            raise ConfigError(f"the Relation Network compares feature maps, but backbone {backbone!r} gives vectors "
                              f"{self.z_shape}; choose conv4_maps")
        self.g_phi = relation_module(self.z_shape, hidden, fc_hidden)

    def class_features(self, z_support: Tensor, labels: Tensor, n_way: int) -> Tensor:
        """The sum of each class's support feature maps: [T, NK, C, H, W] -> [T, N, C, H, W]."""
        y = F.one_hot(labels, n_way).to(z_support.dtype)  # [T, NK, N]
        return torch.einsum("tsn,tschw->tnchw", y, z_support)

    def predict(self, episode: Episode) -> Tensor:
        z_support, z_query = self.embed(episode)  # [T, NK, C, H, W], [T, NQ, C, H, W]
        z_class = self.class_features(z_support, episode.support_labels, episode.n_way)  # [T, N, C, H, W]
        (T, N), NQ = z_class.shape[:2], z_query.shape[1]
        pairs = torch.cat([z_class[:, None].expand(T, NQ, *z_class.shape[1:]),
                           z_query[:, :, None].expand(T, NQ, N, *z_query.shape[2:])], dim=3)  # [T, NQ, N, 2C, H, W]
        return self.g_phi(pairs.flatten(0, 2)).view(T, NQ, N)  # relation scores r_{i,j} in [0, 1]

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        relation_scores = self.predict(episode)  # [T, NQ, N]
        targets = F.one_hot(episode.query_labels, episode.n_way).to(relation_scores.dtype)  # 1[y_i = j]
        return F.mse_loss(relation_scores, targets), relation_scores
