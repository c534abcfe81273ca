"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR 2020).

MAML whose inner loop adapts the head only. f_θ = head_w ∘ body_φ with θ = (φ, w); for every task τ,
    z = body_φ(x)                                   (the body's features, computed once per task)
    w'_τ = w − α ∇_w L_τ^support(head_w(z))        (``inner_steps`` times; φ is not adapted)
and the outer loop updates θ by ∇_θ Σ_τ L_τ^query(head_w'_τ(body_φ(x))). The body is updated by the outer loop
alone. Its meta-gradient equals MAML's with the body's inner learning rate set to 0, but the body runs forward once
per task and is differentiated once, not through every inner step: hence the speed.

NIL-testing (``nil_testing: true``; the paper's "No Inner Loop" at test time): in validation, test and prediction
the head is removed, and a query is classified by a softmax over the cosine similarities of its body features to
the support examples' features, summed per class (the Matching Networks rule the paper points to).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_meta.algorithms.base import register
from lightning_meta.algorithms.gradient import Params
from lightning_meta.algorithms.maml import MAML
from lightning_meta.algorithms.metric import logsumexp_by_class
from lightning_meta.algorithms.prototypes import cosine
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError


@register
class ANIL(MAML):
    """ANIL: MAML with the inner loop on the final linear layer only.

    Args:
        nil_testing: evaluate without the head: cosine attention over the support set's body features (see the
            module docstring).
        Other arguments: see :class:`MAML` (``inner_lr``, ``inner_steps``: the head's inner loop).
    """

    name = "anil"

    def __init__(self, image_shape: tuple[int, ...], n_way: int, nil_testing: bool = False, **kwargs: Any) -> None:
        super().__init__(image_shape, n_way, **kwargs)
        if self.hparams.per_step_batch_norm or self.hparams.per_step_batch_norm_statistics or \
                self.hparams.learn_inner_lr:
            raise ConfigError("ANIL adapts its head alone; model.per_step_batch_norm, per_step_batch_norm_statistics "
                              "and learn_inner_lr are settings of MAML's whole-network inner loop, not offered for "
                              "ANIL")
        if nil_testing and not n_way:
            raise ConfigError("model.nil_testing classifies by the support set's labels; it needs classification "
                              "episodes (model.n_way >= 2), not regression")
        self.head_names = [f"1.{name}" for name, _ in self.net[1].named_parameters()]  # "1.weight", "1.bias"

    def body(self, phi: Params, x: Tensor) -> Tensor:
        """body_φ(x): the backbone's features [B, D] with the parameters φ."""
        return torch.func.functional_call(self.net[0], {k.removeprefix("0."): p for k, p in phi.items()}, (x,))

    def head(self, w: Params, z: Tensor) -> Tensor:
        """head_w(z): class scores [B, N] of features [B, D]."""
        return F.linear(z, w["1.weight"], w["1.bias"])

    def features(self, phi: Params, support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """body_φ of one task's support [NK, D] and query [NQ, D]; batch norm as in ``query_outputs``: the
        queries on their own statistics (transductive) or on the support set's."""
        if self.hparams.batch_norm == "transductive" or not self.norms:
            return self.body(phi, support), self.body(phi, query)
        with self.statistics_from(support.shape[0]):
            z = self.body(phi, torch.cat([support, query]))
        return z[: support.shape[0]], z[support.shape[0]:]

    def adapted_outputs(self, theta: Params, support: Tensor, support_labels: Tensor, query: Tensor, steps: int,
                        alpha: float, first_order: bool, every_step: bool = False) -> Tensor:
        """head_w'(body_φ(query)) for one task, [NQ, N]: the head adapted on the support set's features (with
        ``every_step``, after each inner step, [steps, NQ, N])."""
        phi = {k: p for k, p in theta.items() if k not in self.head_names}
        w = {k: theta[k] for k in self.head_names}
        z_support, z_query = self.features(phi, support, query)  # [NK, D], [NQ, D]
        if every_step:
            return torch.stack([self.head(w_i, z_query) for w_i in
                                self.adaptation(w, z_support, support_labels, steps, alpha, first_order, f=self.head)])
        w_prime = self.adapt(w, z_support, support_labels, steps, alpha, first_order, f=self.head)
        return self.head(w_prime, z_query)

    def nil_scores(self, phi: Params, support: Tensor, support_labels: Tensor, query: Tensor, n_way: int) -> Tensor:
        """NIL-testing for one task: log Σ_{i: y_i = n} softmax_i(cos(z_query, z_i)), [NQ, N]."""
        z_support, z_query = self.features(phi, support, query)
        attention = cosine(z_query[None], z_support[None]).log_softmax(-1)  # [1, NQ, NK]
        return logsumexp_by_class(attention, support_labels[None], n_way)[0]

    def predict(self, episode: Episode) -> Tensor:
        if not self.hparams.nil_testing:
            return super().predict(episode)
        phi = {k: p.detach() for k, p in self.meta_parameters().items() if k not in self.head_names}
        with self.first_derivatives_only():
            return torch.stack([self.nil_scores(phi, *task, episode.n_way)
                                for task in zip(episode.support, episode.support_labels, episode.query)])
