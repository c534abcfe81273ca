"""R2D2, ridge regression differentiable discriminator (Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with
differentiable closed-form solvers", ICLR 2019).

Per task, a ridge regression from the support embeddings to one-hot labels, solved in closed form:
    X = [f_θ(x_support), 1]                           [NK, D+1], with a bias column
    W = argmin_W ‖X W − Y‖² + λ ‖W‖² = (XᵀX + λI)⁻¹ Xᵀ Y = Xᵀ (X Xᵀ + λI)⁻¹ Y      [D+1, N]
the second form by the Woodbury identity, an NK x NK system instead of a (D+1) x (D+1) one. Query scores are
    ŷ = α · [f_θ(x_query), 1] W + β
with α, β and λ meta-learned with θ by the cross-entropy of the query scores; the gradient reaches f_θ through the
solve. β shifts every class's score alike, so a softmax's cross-entropy gives it no gradient; it is kept because
the paper has it (it matters in the paper's binary variant, LR-D2, not offered here).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import register
from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError
from lightning_meta.precision import autocast_off


def ridge_regression(X: Tensor, Y: Tensor, lam: Tensor) -> Tensor:
    """W = argmin ‖X W − Y‖² + λ‖W‖² for every task: X [T, n, d], Y [T, n, N] -> [T, d, N]. The Woodbury form
    Xᵀ (X Xᵀ + λI)⁻¹ Y (an n x n solve) where the support set is smaller than the embedding (the few-shot case);
    else the primal (XᵀX + λI)⁻¹ Xᵀ Y (d x d). Both are the same W."""
    n, d = X.shape[-2:]
    if n <= d:
        gram = X @ X.transpose(-1, -2) + lam * torch.eye(n, dtype=X.dtype, device=X.device)  # [T, n, n]
        return X.transpose(-1, -2) @ torch.linalg.solve(gram, Y)
    gram = X.transpose(-1, -2) @ X + lam * torch.eye(d, dtype=X.dtype, device=X.device)  # [T, d, d]
    return torch.linalg.solve(gram, X.transpose(-1, -2) @ Y)


@register
class R2D2(MetricLearner):
    """R2D2: f_θ (``backbone``) and a ridge-regression head solved per task.

    Args:
        lam: λ's initial value (50 in the authors' code, MetaOptNet's and LibFewShot's).
        scale: α's initial value (the authors' CIFAR-FS scripts: 10).
        learn_lam: meta-learn λ (as log λ, so it stays positive); else it stays at ``lam``.
        Other arguments: see :class:`MetricLearner`.
    """

    name = "r2d2"

    def __init__(self, image_shape: tuple[int, ...], lam: float = 50.0, scale: float = 10.0, learn_lam: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(image_shape, **kwargs)
        if lam <= 0 or scale <= 0:
            raise ConfigError(f"model.lam and model.scale must be positive (got {lam}, {scale}); the paper's code "
                              f"starts at 50 and 10")
        self.log_lam = nn.Parameter(torch.tensor(math.log(lam)), requires_grad=learn_lam)  # log λ
        self.alpha = nn.Parameter(torch.tensor(float(scale)))  # α
        self.beta = nn.Parameter(torch.tensor(0.0))  # β

    def predict(self, episode: Episode) -> Tensor:
        z_support, z_query = self.embed(episode)  # [T, NK, *z], [T, NQ, *z]
        dtype = torch.promote_types(z_support.dtype, torch.float32)  # the solve in float32 at least
        with autocast_off(z_support.device.type):
            X = F.pad(z_support.flatten(2).to(dtype), (0, 1), value=1.0)  # [T, NK, D+1]
            X_query = F.pad(z_query.flatten(2).to(dtype), (0, 1), value=1.0)  # [T, NQ, D+1]
            Y = F.one_hot(episode.support_labels, episode.n_way).to(dtype)  # [T, NK, N]
            W = ridge_regression(X, Y, self.log_lam.exp())  # [T, D+1, N]
            return self.alpha * (X_query @ W) + self.beta  # ŷ, [T, NQ, N]
