"""Meta-SGD (Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017).

MAML with a learned step size for every coordinate of θ: α has θ's shape, and the inner step is
    θ'_τ = θ − α ∘ ∇_θ L_τ^support(f_θ)          (one step in the paper; ``inner_steps`` more, each with the same α)
The outer loop learns (θ, α) together: ∇_(θ,α) Σ_τ L_τ^query(f_θ'_τ). α is also the step size of validation, test
and prediction. The paper initialises α at random; here α starts at ``inner_lr`` everywhere (learn2learn's
choice), so that Meta-SGD starts as MAML does and what learning α adds is measured from the same point.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_meta.algorithms.base import register
from lightning_meta.algorithms.gradient import Params
from lightning_meta.algorithms.maml import MAML
from lightning_meta.errors import ConfigError


@register
class MetaSGD(MAML):
    """Meta-SGD: MAML whose inner step size α, one per parameter coordinate, is meta-learned with θ.

    Args:
        inner_lr: the value every coordinate of α starts from.
        Other arguments: see :class:`MAML` (``eval_inner_lr`` does not apply: α is learned).
    """

    name = "metasgd"

    def __init__(self, image_shape: tuple[int, ...], n_way: int, inner_steps: int = 1, inner_lr: float = 0.4,
                 **kwargs: Any) -> None:
        super().__init__(image_shape, n_way, inner_steps=inner_steps, inner_lr=inner_lr, **kwargs)
        if self.hparams.eval_inner_lr is not None or self.hparams.learn_inner_lr:
            raise ConfigError("Meta-SGD learns a step size per coordinate and evaluates with it; remove "
                              "model.eval_inner_lr and model.learn_inner_lr")
        theta = self.meta_parameters()
        self.alpha = nn.ParameterList(torch.full_like(p, inner_lr) for p in theta.values())  # α, shaped like θ
        self.alpha_of = {name: i for i, name in enumerate(theta)}  # θ's parameter name -> its α

    def inner_update(self, theta: Params, grads: Params, alpha: float, step: int) -> Params:
        """θ − α ∘ ∇ with the learned α (the fixed ``alpha`` is unused)."""
        return {k: p - self.alpha[self.alpha_of[k]] * grads[k] for k, p in theta.items()}
