"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks", ICML 2017), and its first-order approximation (same paper, section 5.2).

For every task τ of a meta-batch, adapt θ on the support set by gradient descent,
    θ'_τ = θ − α ∇_θ L_τ^support(f_θ)        (``inner_steps`` times, α = ``inner_lr``),
then update θ ← θ − β ∇_θ Σ_τ L_τ^query(f_θ'_τ) with the outer optimiser (β = ``lr``). The outer gradient flows
through the inner steps (second derivatives); ``first_order`` drops those terms, so the outer gradient is
∇_θ' L^query(f_θ') taken at the adapted parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_meta.algorithms.base import InnerStepPictures, register
from lightning_meta.algorithms.gradient import GradientLearner, Params
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError

# normalisation layers left after batch norm became MetaBatchNorm; F.batch_norm, layer_norm and group_norm
# have wrong second derivatives under vmap (functorch#534)
VMAP_UNSAFE_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
                     nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm)


@register
class MAML(GradientLearner, InnerStepPictures):
    """MAML with any backbone; one class for second- and first-order MAML.

    Args:
        image_shape: input shape, e.g. (1, 28, 28).
        n_way: N output units; 0 for regression.
        backbone: ``conv4_strided`` is the paper's Omniglot network, ``mlp`` with hidden 40 its sinusoid one.
        hidden: filters (or units) of the backbone.
        inner_steps: gradient steps on the support set in training (0 trains f_θ on the query sets alone: the
            paper's "pretrained on all tasks" baseline).
        inner_lr: α, their step size.
        eval_inner_steps: steps when validating and testing (default: ``inner_steps``).
        eval_inner_lr: their step size (default: ``inner_lr``).
        first_order: drop the second derivatives (first-order MAML).
        meta_batch: ``vmap`` runs the tasks of a meta-batch as one vectorised computation (``torch.func.vmap``),
            ``loop`` one after another; both compute the same numbers. vmap is faster where one task's work is
            small (few, small images), loop where it is large (docs/algorithms.md gives the rule measured).
        batch_norm: query statistics, ``transductive`` (the paper) or ``support``; see ``GradientLearner``.
        **kwargs: outer optimiser settings (Adam, β = ``lr``), see :class:`MetaLearner`.
    """

    name = "maml"

    def __init__(
        self,
        image_shape: tuple[int, ...],
        n_way: int,
        backbone: str = "conv4_strided",
        hidden: int = 64,
        inner_steps: int = 1,
        inner_lr: float = 0.4,
        eval_inner_steps: int | None = None,
        eval_inner_lr: float | None = None,
        first_order: bool = False,
        meta_batch: Literal["vmap", "loop"] = "vmap",
        batch_norm: Literal["transductive", "support"] = "transductive",
        **kwargs: Any,
    ) -> None:
        super().__init__(image_shape, n_way, backbone=backbone, hidden=hidden, batch_norm=batch_norm, **kwargs)
        if inner_steps < 0 or (eval_inner_steps is not None and eval_inner_steps < 0):
            raise ConfigError(f"model.inner_steps and eval_inner_steps must be >= 0 (got {inner_steps}, "
                              f"{eval_inner_steps})")
        unbatchable = [type(m).__name__ for m in self.net.modules() if isinstance(m, VMAP_UNSAFE_NORMS)]
        if meta_batch == "vmap" and unbatchable:
            raise ConfigError(f"the backbone has {unbatchable[0]} layers, whose second derivatives torch.func.vmap "
                              f"gets wrong (functorch#534); set model.meta_batch: loop")
        self.train_adaptation = (inner_steps, inner_lr)
        self.eval_adaptation = (inner_steps if eval_inner_steps is None else eval_inner_steps,
                                inner_lr if eval_inner_lr is None else eval_inner_lr)

    def adapt(self, theta: Params, support: Tensor, support_labels: Tensor, steps: int, alpha: float,
              first_order: bool, f: Callable[[Params, Tensor], Tensor] | None = None) -> Params:
        """θ' after ``steps`` steps θ ← θ − α ∇_θ L^support(f_θ) on one task (``f``: f_θ unless given)."""
        for _ in range(steps):
            at = {k: p.detach() for k, p in theta.items()} if first_order else theta
            grads = self.inner_grad(at, support, support_labels, f)  # differentiable in θ
            theta = self.inner_update(theta, grads, alpha)
        return theta

    def inner_update(self, theta: Params, grads: Params, alpha: float) -> Params:
        """One inner step from θ with gradient ∇: θ − α ∇ (Meta-SGD learns its own α)."""
        return {k: p - alpha * grads[k] for k, p in theta.items()}

    def adapted_outputs(self, theta: Params, support: Tensor, support_labels: Tensor, query: Tensor, steps: int,
                        alpha: float, first_order: bool) -> Tensor:
        """f_θ'(query) for one task: support [NK, *x], query [NQ, *x] -> [NQ, N]."""
        theta_prime = self.adapt(theta, support, support_labels, steps, alpha, first_order)
        return self.query_outputs(theta_prime, support, query)

    def run_tasks(self, theta: Params, episode: Episode, steps: int, alpha: float, first_order: bool) -> Tensor:
        """f_θ'_τ(query_τ) for every task τ of the meta-batch, [T, NQ, N]."""
        task = partial(self.adapted_outputs, theta, steps=steps, alpha=alpha, first_order=first_order)
        with self.first_derivatives_only(first_order):
            if self.hparams.meta_batch == "vmap":
                return torch.func.vmap(task)(episode.support, episode.support_labels, episode.query)
            return torch.stack([task(*t) for t in zip(episode.support, episode.support_labels, episode.query)])

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        steps, alpha = self.train_adaptation
        outputs = self.run_tasks(self.meta_parameters(), episode, steps, alpha, self.hparams.first_order)
        loss = self.loss(outputs.flatten(0, 1), episode.query_labels.flatten(0, 1))  # mean_τ L_τ^query(f_θ'_τ)
        return loss, outputs

    def predict(self, episode: Episode) -> Tensor:
        return self.predict_after(episode, self.eval_steps)

    def predict_after(self, episode: Episode, steps: int) -> Tensor:
        """Query predictions after ``steps`` inner steps at the evaluation step size (θ itself is never changed)."""
        theta = {k: p.detach() for k, p in self.meta_parameters().items()}
        return self.run_tasks(theta, episode, steps, self.eval_adaptation[1], first_order=True)

    @property
    def eval_steps(self) -> int:
        """Inner steps when validating and testing."""
        return self.eval_adaptation[0]
