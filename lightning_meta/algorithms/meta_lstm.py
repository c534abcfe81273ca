"""The LSTM meta-learner (Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017).

A learner network f_θ is trained on a task's support set by an LSTM whose cell state is θ itself:

    θ_t = f_t ⊙ θ_{t−1} − i_t ⊙ ∇_t,
    i_t = σ(W_I · [h_t, θ_{t−1}, i_{t−1}] + b_I),    f_t = σ(W_F · [h_t, θ_{t−1}, f_{t−1}] + b_F),

where ∇_t = ∇_θ L_t is the learner's gradient on the t-th mini-batch of the support set and h_t the output of a
first, standard LSTM layer that reads (∇_t, L_t), both preprocessed. Plain SGD with learning rate α is the case
f_t = 1, i_t = α. Every coordinate of θ is one batch element of this two-layer LSTM, so the meta-learner has the
same few parameters whatever the learner's size. The initial cell state θ_0 is learned too. ∇_t and L_t enter as
inputs, detached: second derivatives are ignored. After T updates, the query loss of f_θ_T trains the
meta-learner and θ_0 together. The learner's batch norm uses the statistics of the batch at hand, in training and
in evaluation alike.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, vmap

from lightning_meta.algorithms.base import register
from lightning_meta.algorithms.gradient import GradientLearner, Params
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """The paper's input scaling, [...] -> [..., 2]: (log|x| / p, sign(x)) where |x| ≥ e^−p, else (−1, e^p x)."""
    large = x.abs() >= math.exp(-p)
    log = x.abs().clamp(min=math.exp(-p)).log() / p  # the clamp only guards the branch not taken
    return torch.stack([torch.where(large, log, -1.0), torch.where(large, x.sign(), x * math.exp(p))], dim=-1)


@register
class MetaLSTM(GradientLearner):
    """The LSTM meta-learner; the learner f_θ is the backbone plus a linear output layer.

    Args:
        image_shape: input shape, e.g. (1, 28, 28).
        n_way: N output units of the learner.
        backbone: the learner's feature network (``conv4``, as in the paper: 32 filters on miniImageNet, 64 on
            Omniglot).
        hidden: its filters.
        inner_steps: T, the learner updates per task in training.
        inner_batch: examples per update (default: the whole support set), drawn in shuffled passes.
        eval_inner_steps: T when validating and testing (default: ``inner_steps``).
        meta_hidden: units of the first LSTM layer (the paper: 20).
        p: the preprocessing constant (the paper: 10).
        batch_norm: query statistics, ``transductive`` or ``support``; see ``GradientLearner``.
        **kwargs: optimiser settings (Adam, 1e-3 in the paper), see :class:`MetaLearner`.
    """

    name = "meta_lstm"

    def __init__(
        self,
        image_shape: tuple[int, ...],
        n_way: int,
        backbone: str = "conv4",
        hidden: int = 64,
        inner_steps: int = 8,
        inner_batch: int | None = None,
        eval_inner_steps: int | None = None,
        meta_hidden: int = 20,
        p: float = 10.0,
        batch_norm: Literal["transductive", "support"] = "transductive",
        **kwargs: Any,
    ) -> None:
        super().__init__(image_shape, n_way, backbone=backbone, hidden=hidden, batch_norm=batch_norm, **kwargs)
        if min(inner_steps, inner_batch or 1, eval_inner_steps or 1, meta_hidden) < 1 or p <= 0:
            raise ConfigError(f"model.inner_steps, inner_batch, eval_inner_steps and meta_hidden must be >= 1 and "
                              f"p > 0 (got {inner_steps}, {inner_batch}, {eval_inner_steps}, {meta_hidden}, {p})")
        self.lstm = nn.LSTMCell(4, meta_hidden)  # first layer, on (∇_t, L_t) preprocessed
        self.W_F = nn.Linear(meta_hidden + 2, 1)  # forget gate, on [h_t, θ_{t−1}, f_{t−1}]
        self.W_I = nn.Linear(meta_hidden + 2, 1)  # input gate, on [h_t, θ_{t−1}, i_{t−1}]
        for gate, bias in ((self.W_F, (4.0, 6.0)), (self.W_I, (-5.0, -4.0))):  # start near SGD: f ≈ 1, i ≈ 0.01
            nn.init.uniform_(gate.weight, -0.01, 0.01)
            nn.init.uniform_(gate.bias, *bias)

    def meta_learner_parameters(self) -> Params:
        """The parameters of the two LSTM layers, without θ_0."""
        return {f"{name}.{k}": p for name in ("lstm", "W_F", "W_I") for k, p in getattr(self, name).named_parameters()}

    def learner_loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """L_t of the learner at the flat θ [P]."""
        return self.batch_loss(self.unflatten(theta), x, y)

    def meta_learner_step(self, theta: Tensor, grad: Tensor, loss: Tensor, state: tuple) -> tuple[Tensor, tuple]:
        """θ_{t−1} -> θ_t for every task: θ and ∇_t [T, P], L_t [T]; ``state`` is the first layer's (h, c) and the
        previous gates f_{t−1}, i_{t−1} [T, P]."""
        hc, f, i = state
        T, P = theta.shape
        inputs = torch.cat([preprocess(grad, self.hparams.p),
                            preprocess(loss, self.hparams.p)[:, None].expand(T, P, 2)], dim=-1)  # [T, P, 4]
        h, c = self.lstm(inputs.flatten(0, 1), hc)  # [T*P, H]
        h_t = h.view(T, P, -1)
        f = torch.sigmoid(self.W_F(torch.cat([h_t, theta[..., None], f[..., None]], dim=-1))).squeeze(-1)
        i = torch.sigmoid(self.W_I(torch.cat([h_t, theta[..., None], i[..., None]], dim=-1))).squeeze(-1)
        return f * theta - i * grad, ((h, c), f, i)

    def adapt(self, episode: Episode, steps: int, batch: int | None) -> Tensor:
        """θ_T [T, P] of every task: ``steps`` meta-learner updates of θ_0 on mini-batches of its support set."""
        T = episode.support.shape[0]
        batches = self.mini_batches(episode, steps, batch)  # [T, steps, B]
        batches, tasks = batches.to(episode.support.device), torch.arange(T, device=episode.support.device)[:, None]
        theta = torch.cat([p.flatten() for p in self.meta_parameters().values()]).expand(T, -1)  # θ_0, [T, P]
        state = (None, torch.zeros_like(theta), torch.zeros_like(theta))
        for b in batches.unbind(1):  # [T, B]
            x, y = episode.support[tasks, b], episode.support_labels[tasks, b]  # [T, B, *x], [T, B]
            grad, loss = vmap(grad_and_value(self.learner_loss))(theta.detach(), x, y)  # ∇_t, L_t as inputs only
            theta, state = self.meta_learner_step(theta, grad, loss, state)
        return theta

    def query_scores(self, theta: Tensor, episode: Episode) -> Tensor:
        """f_θ_T(query) [T, NQ, N]."""
        return vmap(self.query_outputs)(self.unflatten(theta), episode.support, episode.query)

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        hp = self.hparams
        with self.first_derivatives_only():  # the learner's gradients are inputs, never differentiated
            theta = self.adapt(episode, hp.inner_steps, hp.inner_batch)
            outputs = self.query_scores(theta, episode)
        return self.loss(outputs.flatten(0, 1), episode.query_labels.flatten(0, 1)), outputs

    def predict(self, episode: Episode) -> Tensor:
        hp = self.hparams
        with torch.no_grad(), self.first_derivatives_only():
            theta = self.adapt(episode, hp.eval_inner_steps or hp.inner_steps, hp.inner_batch)
            return self.query_scores(theta, episode)
