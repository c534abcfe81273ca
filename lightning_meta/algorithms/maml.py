"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks", ICML 2017), and its first-order approximation (same paper, section 5.2).

For every task τ of a meta-batch, adapt θ on the support set by gradient descent,
    θ'_τ = θ − α ∇_θ L_τ^support(f_θ)        (``inner_steps`` times, α = ``inner_lr``),
then update θ ← θ − β ∇_θ Σ_τ L_τ^query(f_θ'_τ) with the outer optimiser (β = ``lr``). The outer gradient flows
through the inner steps (second derivatives); ``first_order`` drops those terms, so the outer gradient is
∇_θ' L^query(f_θ') taken at the adapted parameters.

MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019) is a set of settings of this class, each
usable on its own: the multi-step loss Σ_i v_i L^query(f_θ_i) over the parameters θ_i after every inner step i,
with weights v_i annealed towards the last step (``multi_step_loss_epochs``); derivative-order annealing, first
order for the first epochs (``first_order_epochs``); learned per-layer per-step inner learning rates α_{l,i}
(``learn_inner_lr``); per-step batch-norm weights and biases (``per_step_batch_norm``); per-step batch-norm
running statistics, used when evaluating (``per_step_batch_norm_statistics``); and cosine annealing of the outer
learning rate (``lr_anneal: cosine``, see MetaLearner).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
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
        first_order_epochs: MAML++'s derivative-order annealing: first order for this many epochs, then second.
        multi_step_loss_epochs: MAML++'s multi-step loss for this many epochs (0: the last step's loss only): the
            weighted sum of the query losses after every inner step, the weights moving from 1/S each towards the
            last step as in the authors' code (``step_weights``); the last step's loss alone afterwards.
        learn_inner_lr: MAML++'s LSLR: a learned inner learning rate for every parameter tensor and inner step,
            starting at ``inner_lr`` (evaluation steps past the last training step reuse the last one's).
        per_step_batch_norm: MAML++'s BNWB: every batch-norm layer has a weight and a bias per inner step, learned
            by the outer loop only (as in the authors' code); step i's support pass and the query pass after it use
            set i (evaluation steps past the last use the last set).
        per_step_batch_norm_statistics: MAML++'s BNRS: every batch-norm layer keeps running means and variances per
            inner step, set i moved (momentum 0.1) once a training step towards the mean over the meta-batch's
            tasks of the batch statistics of the passes that use set i (as for the weights); evaluation normalises
            with them, so each query is classified on its own, in place of the batch's statistics.
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
        first_order_epochs: int = 0,
        multi_step_loss_epochs: int = 0,
        learn_inner_lr: bool = False,
        per_step_batch_norm: bool = False,
        per_step_batch_norm_statistics: bool = False,
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
        if multi_step_loss_epochs < 0 or first_order_epochs < 0 or (multi_step_loss_epochs and inner_steps < 1):
            raise ConfigError(f"model.multi_step_loss_epochs and first_order_epochs must be >= 0, and the multi-step "
                              f"loss needs inner steps (got {multi_step_loss_epochs}, {first_order_epochs}, "
                              f"inner_steps {inner_steps})")
        if learn_inner_lr and (eval_inner_lr is not None or inner_steps < 1):
            raise ConfigError("model.learn_inner_lr learns the step sizes of inner_steps (>= 1) training steps and "
                              "evaluates with them; remove model.eval_inner_lr")
        if (per_step_batch_norm or per_step_batch_norm_statistics) and (inner_steps < 1 or not self.norms):
            raise ConfigError("model.per_step_batch_norm and per_step_batch_norm_statistics need inner_steps >= 1 "
                              "and a backbone with batch norm")
        self.outer_only: set[str] = set()  # parameters the inner loop leaves as they are
        for name, module in self.net.named_modules():
            if module in self.norms and per_step_batch_norm:
                module.per_step(inner_steps)
                self.outer_only |= {f"{name}.{k}" for k, _ in module.named_parameters(recurse=False)}
            if module in self.norms and per_step_batch_norm_statistics:
                module.per_step_statistics(inner_steps)
        if learn_inner_lr:  # α_{l,i}, one per parameter tensor l of θ and inner step i
            adapted = [name for name in self.meta_parameters() if name not in self.outer_only]
            self.inner_lrs = nn.ParameterList(torch.full((inner_steps,), float(inner_lr)) for _ in adapted)
            self.inner_lr_of = {name: i for i, name in enumerate(adapted)}
        self.train_adaptation = (inner_steps, inner_lr)
        self.eval_adaptation = (inner_steps if eval_inner_steps is None else eval_inner_steps,
                                inner_lr if eval_inner_lr is None else eval_inner_lr)

    def adaptation(self, theta: Params, support: Tensor, support_labels: Tensor, steps: int, alpha: float,
                   first_order: bool, f: Callable[[Params, Tensor], Tensor] | None = None) -> Iterator[Params]:
        """θ_1, ..., θ_steps of one task, θ_{i+1} = θ_i − α ∇_θ L^support(f_θ_i) (``f``: f_θ unless given)."""
        for step in range(steps):
            at = {k: p.detach() for k, p in theta.items()} if first_order else theta
            with self.at_step(step):
                grads = self.inner_grad(at, support, support_labels, f)  # differentiable in θ
            theta = self.inner_update(theta, grads, alpha, step)
            yield theta

    def at_step(self, step: int) -> AbstractContextManager[None]:
        """Batch norm with the per-step weights and statistics of inner step ``step`` (and of the query pass after
        it): set ``step``, the last set past the last training step; nothing to set without per-step batch norm."""
        if not (self.hparams.per_step_batch_norm or self.hparams.per_step_batch_norm_statistics):
            return nullcontext()
        return self.batch_norm_settings(step=min(max(step, 0), self.train_adaptation[0] - 1))

    def running_statistics(self) -> AbstractContextManager[None]:
        """Batch norm on the per-step running statistics, as MAML++ evaluates; nothing to set without them."""
        if not self.hparams.per_step_batch_norm_statistics:
            return nullcontext()
        return self.batch_norm_settings(use_running=True)

    def adapt(self, theta: Params, support: Tensor, support_labels: Tensor, steps: int, alpha: float,
              first_order: bool, f: Callable[[Params, Tensor], Tensor] | None = None) -> Params:
        """θ' after ``steps`` steps on one task (see ``adaptation``)."""
        for theta in self.adaptation(theta, support, support_labels, steps, alpha, first_order, f):
            pass
        return theta

    def inner_update(self, theta: Params, grads: Params, alpha: float, step: int) -> Params:
        """Inner step ``step`` from θ with gradient ∇: θ − α ∇, with the learned α_{l,step} of each parameter
        tensor l under ``learn_inner_lr`` (Meta-SGD learns its own α)."""
        i = min(step, self.train_adaptation[0] - 1)
        if self.hparams.learn_inner_lr:
            rates = {k: self.inner_lrs[j][i] for k, j in self.inner_lr_of.items()}  # α_{l,i}
        else:
            rates = dict.fromkeys(theta, alpha)
        return {k: p if k in self.outer_only else p - rates[k] * grads[k] for k, p in theta.items()}

    def adapted_outputs(self, theta: Params, support: Tensor, support_labels: Tensor, query: Tensor, steps: int,
                        alpha: float, first_order: bool, every_step: bool = False) -> Tensor:
        """f_θ'(query) for one task: support [NK, *x], query [NQ, *x] -> [NQ, N]; with ``every_step``, after each
        inner step, [steps, NQ, N]."""
        if every_step:
            outputs = []
            for i, theta_i in enumerate(self.adaptation(theta, support, support_labels, steps, alpha, first_order)):
                with self.at_step(i):
                    outputs.append(self.query_outputs(theta_i, support, query))
            return torch.stack(outputs)
        theta_prime = self.adapt(theta, support, support_labels, steps, alpha, first_order)
        with self.at_step(steps - 1):
            return self.query_outputs(theta_prime, support, query)

    def run_tasks(self, theta: Params, episode: Episode, steps: int, alpha: float, first_order: bool,
                  every_step: bool = False, update_statistics: bool = False) -> Tensor:
        """f_θ'_τ(query_τ) for every task τ of the meta-batch, [T, NQ, N] (``every_step``: [T, steps, NQ, N]).
        ``update_statistics``: move the per-step running statistics towards those of these tasks' passes."""
        task = partial(self.task_outputs, theta, steps=steps, alpha=alpha, first_order=first_order,
                       every_step=every_step, record=update_statistics)
        with self.first_derivatives_only(first_order):
            if self.hparams.meta_batch == "vmap":
                outputs, statistics = torch.func.vmap(task)(episode.support, episode.support_labels, episode.query)
            else:
                tasks = [task(*t) for t in zip(episode.support, episode.support_labels, episode.query)]
                outputs = torch.stack([outputs for outputs, _ in tasks])
                statistics = [torch.stack(layer) for layer in zip(*(statistics for _, statistics in tasks))]
        for norm, layer in zip(self.norms, statistics):  # layer: [T, S, 2, C]
            norm.update_running_statistics(layer.mean(0))
        return outputs

    def task_outputs(self, theta: Params, support: Tensor, support_labels: Tensor, query: Tensor, record: bool,
                     **adaptation: Any) -> tuple[Tensor, list[Tensor]]:
        """``adapted_outputs`` of one task, and with ``record`` the batch statistics of its passes: per layer
        [S, 2, C], the mean over the passes that used each set of per-step statistics (else none)."""
        if not record:
            return self.adapted_outputs(theta, support, support_labels, query, **adaptation), []
        with self.recorded_statistics() as statistics:
            outputs = self.adapted_outputs(theta, support, support_labels, query, **adaptation)
        S = self.train_adaptation[0]
        return outputs, [torch.stack([torch.stack(layer[i]).mean(0) for i in range(S)]) for layer in statistics]

    def step_weights(self) -> list[float] | None:
        """MAML++'s multi-step loss weights v_1..v_S at the current epoch e, as in the authors' code: each starts at
        1/S; the first S − 1 fall by e·d to at least 0.03/S and the last rises by (S − 1)·e·d to at most
        1 − (S − 1)·0.03/S, d = 1 / (S · multi_step_loss_epochs). None once those epochs are over (or never)."""
        epochs, e = self.hparams.multi_step_loss_epochs, self.current_epoch
        if e >= epochs:
            return None
        S = self.train_adaptation[0]
        d = 1 / S / epochs
        return [max(1 / S - e * d, 0.03 / S)] * (S - 1) + [min(1 / S + e * (S - 1) * d, 1 - (S - 1) * 0.03 / S)]

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        steps, alpha = self.train_adaptation
        first_order = self.hparams.first_order or self.current_epoch < self.hparams.first_order_epochs
        weights = self.step_weights()
        outputs = self.run_tasks(self.meta_parameters(), episode, steps, alpha, first_order,
                                 every_step=weights is not None,
                                 update_statistics=self.hparams.per_step_batch_norm_statistics and self.training)
        labels = episode.query_labels.flatten(0, 1)
        if weights is None:
            return self.loss(outputs.flatten(0, 1), labels), outputs  # mean_τ L_τ^query(f_θ'_τ)
        loss = sum(v * self.loss(outputs[:, i].flatten(0, 1), labels) for i, v in enumerate(weights))
        return loss, outputs[:, -1]  # Σ_i v_i mean_τ L_τ^query(f_θ_i,τ), and the last step's outputs

    def predict(self, episode: Episode) -> Tensor:
        return self.predict_after(episode, self.eval_steps)

    def predict_after(self, episode: Episode, steps: int) -> Tensor:
        """Query predictions after ``steps`` inner steps at the evaluation step size (θ itself is never changed)."""
        theta = {k: p.detach() for k, p in self.meta_parameters().items()}
        with self.running_statistics():
            return self.run_tasks(theta, episode, steps, self.eval_adaptation[1], first_order=True)

    @property
    def eval_steps(self) -> int:
        """Inner steps when validating and testing."""
        return self.eval_adaptation[0]
