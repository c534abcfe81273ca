"""Class prototypes and cosines of embedding vectors: shared by ProtoNet, SimpleShot and the transductive rules."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def class_means(z: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """The mean of each class's examples (ProtoNet's prototypes c_k, SimpleShot's centroids): z [T, M, D],
    labels [T, M] -> [T, N, D]."""
    y = F.one_hot(labels, n_way).to(z.dtype)  # [T, M, N]
    return y.transpose(1, 2) @ z / y.sum(1)[..., None]


def cosine(x: Tensor, y: Tensor) -> Tensor:
    """cos(x_i, y_j) of every pair: x [T, M, D], y [T, N, D] -> [T, M, N]."""
    return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(1, 2)
