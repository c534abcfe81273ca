"""What the optimization-based learners share: a network f_θ they adapt by gradient steps, called with
explicit parameters, its task loss, and how batch norm treats the query set.

Batch norm always normalises with the statistics of the examples at hand, as in the MAML paper; its layers are
:class:`~lightning_meta.backbones.MetaBatchNorm`, whose derivatives are exact under ``torch.func.vmap``
(the learners that need first derivatives only switch it to PyTorch's faster kernel: ``first_derivatives_only``).
``batch_norm: transductive`` (the papers' default) scores the query set as one batch, so its statistics
come from the queries; ``batch_norm: support`` normalises every query with the support set's statistics, so
each query is classified on its own (non-transductive).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightning_meta.algorithms.base import MetaLearner, fixed_output_task
from lightning_meta.backbones import MetaBatchNorm, build_backbone, with_meta_batch_norm
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError
from lightning_meta.precision import autocast_dtype, autocast_off

Params = dict[str, Tensor]


class GradientLearner(MetaLearner):
    """A network f_θ = backbone + linear output layer, adapted per task by gradient steps.

    Args:
        image_shape: input shape, e.g. (1, 28, 28), or (1,) for sinusoids.
        n_way: N, the output units (one per class); 0 for regression (one real output, squared-error loss).
        backbone: the feature network (any registered backbone).
        hidden: its filters (or units).
        batch_norm: ``transductive`` or ``support`` statistics for the query set (see the module docstring).
        **kwargs: outer optimiser settings, see :class:`MetaLearner`.
    """

    tasks = ("classification", "regression")
    adapts_at_evaluation = True

    def __init__(
        self,
        image_shape: tuple[int, ...],
        n_way: int,
        backbone: str = "conv4",
        hidden: int = 64,
        batch_norm: Literal["transductive", "support"] = "transductive",
        **kwargs: Any,
    ) -> None:
        super().__init__(image_shape, **kwargs)
        if n_way < 0 or n_way == 1:
            raise ConfigError(f"model.n_way must be the number of classes (>= 2), or 0 for regression (got {n_way})")
        features = build_backbone(backbone, image_shape, hidden=hidden)
        with torch.no_grad():
            dim = features(torch.zeros(2, *image_shape)).shape[-1]
        self.net = with_meta_batch_norm(nn.Sequential(features, nn.Linear(dim, n_way or 1)))
        self.norms = [m for m in self.net.modules() if isinstance(m, MetaBatchNorm)]
        self.recording = False  # inside ``recorded_statistics``

    def validate_setup(self, data: Any, inference_mode: bool, max_steps: int) -> None:
        super().validate_setup(data, inference_mode, max_steps)
        self.check_n_way(data, self.hparams.n_way)

    def check_task(self, shots: list[int]) -> None:
        super().check_task(shots)
        fixed_output_task(self, len(shots), self.hparams.n_way)

    def f(self, params: Params, x: Tensor) -> Tensor:
        """f_θ(x) with the parameters ``params`` in place of the module's own."""
        return functional_call(self.net, params, (x,))

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """L: cross-entropy of class scores, or mean squared error of regression outputs."""
        if self.hparams.n_way:
            return F.cross_entropy(outputs, targets)
        return F.mse_loss(outputs, targets)

    def query_outputs(self, params: Params, support: Tensor, query: Tensor) -> Tensor:
        """f_θ(query), [NQ, N]: batch norm on the query batch (transductive) or on the support set's statistics."""
        if self.hparams.batch_norm == "transductive" or not self.norms:
            return self.f(params, query)
        with self.statistics_from(support.shape[0]):
            return self.f(params, torch.cat([support, query]))[support.shape[0]:]

    def statistics_from(self, n: int) -> AbstractContextManager[None]:
        """Batch norm statistics from the first ``n`` examples of each batch only."""
        return self.batch_norm_settings(reference=n)

    def first_derivatives_only(self, first_order: bool = True) -> AbstractContextManager[None]:
        """Batch norm through PyTorch's native kernel, faster but exact only to first order under vmap: for inner
        loops that are not differentiated through (Reptile, first-order MAML, evaluation, the LSTM meta-learner)."""
        return self.batch_norm_settings(first_order=first_order)

    @contextmanager
    def batch_norm_settings(self, **settings: Any) -> Iterator[None]:
        """The :class:`MetaBatchNorm` attributes ``settings`` on every batch norm layer while inside."""
        saved = [{name: getattr(norm, name) for name in settings} for norm in self.norms]
        for norm in self.norms:
            for name, value in settings.items():
                setattr(norm, name, value)
        try:
            yield
        finally:
            for norm, values in zip(self.norms, saved):
                for name, value in values.items():
                    setattr(norm, name, value)

    @staticmethod
    def mini_batches(episode: Episode, steps: int, batch: int | None) -> Tensor:
        """Indices [T, steps, B] of the support examples of each inner step of every task: consecutive shuffled
        passes over its n support examples, drawn from the task's own generator (for the learners that adapt on
        mini-batches of the support set: Reptile, the LSTM meta-learner)."""
        T, n = episode.support.shape[:2]
        batch = min(batch or n, n)
        passes = max(1, -(-steps * batch // n))

        def task(t: int) -> Tensor:
            generator = episode.generator(t, "mini-batches")
            order = torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])
            return order[: steps * batch].view(steps, batch)

        return torch.stack([task(t) for t in range(T)])

    def meta_parameters(self) -> Params:
        """θ, as a name -> tensor dict for ``f``."""
        return dict(self.net.named_parameters())

    def unflatten(self, flat: Tensor) -> Params:
        """A vector [..., P] over θ's coordinates (θ itself, or a statistic of them) -> a name -> tensor dict shaped
        like θ, with the leading dimensions kept."""
        theta = self.meta_parameters()
        chunks = flat.split([p.numel() for p in theta.values()], dim=-1)
        return {k: c.reshape(*flat.shape[:-1], *p.shape) for (k, p), c in zip(theta.items(), chunks)}

    def batch_loss(self, params: Params, x: Tensor, y: Tensor, f: Callable[[Params, Tensor], Tensor] | None = None
                   ) -> Tensor:
        """L(f_params(x), y): the loss the inner steps descend; ``f`` is f_θ unless another function of the adapted
        parameters is given (ANIL's head on the body's features)."""
        return self.loss((f or self.f)(params, x), y)

    def inner_grad(self, params: Params, x: Tensor, y: Tensor, f: Callable[[Params, Tensor], Tensor] | None = None
                   ) -> Params:
        """∇_params L(f_params(x), y) (``f`` as in ``batch_loss``), itself differentiable in ``params``. Under float16
        autocast (``trainer.precision: 16-mixed``) it is computed in float32: the backward pass of a loss on a few
        support examples, unscaled, would underflow in float16, and the outer loss scaling never reaches it.
        bfloat16 has float32's range, so under ``bf16-mixed`` it runs in bfloat16 like the rest."""
        device = x.device.type
        grad = torch.func.grad(self.loss_and_statistics, has_aux=True)
        if autocast_dtype(device) == torch.float16:
            with autocast_off(device):
                grads, statistics = grad(params, x.float(), y, f)
        else:
            grads, statistics = grad(params, x, y, f)
        self.keep_statistics(statistics)
        return grads

    def loss_and_statistics(self, params: Params, x: Tensor, y: Tensor,
                            f: Callable[[Params, Tensor], Tensor] | None = None
                            ) -> tuple[Tensor, list[dict[int, list[Tensor]]]]:
        """``batch_loss``, and the batch statistics its batch-norm calls recorded while ``recorded_statistics`` is
        on (else none): torch.func.grad hands them out as its auxiliary output, since a tensor made inside it must
        not leave by a side effect."""
        if not self.recording:
            return self.batch_loss(params, x, y, f), []
        with self.recorded_statistics() as statistics:
            loss = self.batch_loss(params, x, y, f)
        return loss, statistics

    @contextmanager
    def recorded_statistics(self) -> Iterator[list[dict[int, list[Tensor]]]]:
        """The batch statistics of every batch-norm call while inside: per layer, step -> [mean, variance] of each
        call (:class:`MetaBatchNorm` ``record``)."""
        saved, recording = [norm.record for norm in self.norms], self.recording
        statistics: list[dict[int, list[Tensor]]] = [{} for _ in self.norms]
        for norm, record in zip(self.norms, statistics):
            norm.record = record
        self.recording = True
        try:
            yield statistics
        finally:
            for norm, record in zip(self.norms, saved):
                norm.record = record
            self.recording = recording

    def keep_statistics(self, statistics: list[dict[int, list[Tensor]]]) -> None:
        """Adds statistics recorded inside a transform to the records of the enclosing ``recorded_statistics``."""
        for norm, record in zip(self.norms, statistics):
            for step, calls in record.items():
                norm.record.setdefault(step, []).extend(calls)
