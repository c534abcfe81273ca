"""Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018), batched.

For every task τ of a meta-batch, train a copy of θ on the task: W_τ = SGD_k(L_τ, θ), k steps of SGD or Adam
on mini-batches of its support set. Then move θ towards the adapted weights,
    θ ← θ + ε · mean_τ (W_τ − θ).
The move is made by the outer optimiser: θ − W̄ is the gradient of ½‖θ − W̄‖² (the logged ``train/loss``), so
plain SGD with learning rate ε is the paper's update, and gradient clipping, DDP averaging, mixed precision
and checkpointing apply to it as to any other. ε anneals linearly to ``lr_final`` over ``trainer.max_steps``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lightning_meta.algorithms.base import register
from lightning_meta.algorithms.gradient import GradientLearner, Params
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError


@register
class Reptile(GradientLearner):
    """Reptile; query accuracy after adaptation (``train/acc``) is measured on the query set, which the inner
    loop never sees.

    Args:
        image_shape: input shape, e.g. (1, 28, 28).
        n_way: N output units; 0 for regression.
        backbone: the feature network (``conv4`` in the paper's Omniglot runs).
        hidden: its filters (or units).
        inner_optimizer: ``adam`` (the paper's, with β1 = 0 as in its code) or ``sgd``.
        inner_lr: its learning rate.
        inner_steps: k, optimiser steps per task in training.
        inner_batch: examples per inner mini-batch (the support set, reshuffled after each pass).
        eval_inner_steps: steps when validating and testing (the paper: 50).
        eval_inner_batch: mini-batch size then (default: the whole support set).
        batch_norm: query statistics, ``transductive`` or ``support``; see ``GradientLearner``.
        lr: ε, the outer step size (1.0 in the paper, with plain SGD).
        optimizer: the outer optimiser; ``sgd`` is the paper's update.
        lr_final: ε at the end of training (the paper anneals linearly to 0).
        **kwargs: other optimiser settings, see :class:`MetaLearner`.
    """

    name = "reptile"

    def __init__(
        self,
        image_shape: tuple[int, ...],
        n_way: int,
        backbone: str = "conv4",
        hidden: int = 64,
        inner_optimizer: Literal["adam", "sgd"] = "adam",
        inner_lr: float = 1e-3,
        inner_steps: int = 5,
        inner_batch: int = 10,
        eval_inner_steps: int = 50,
        eval_inner_batch: int | None = None,
        batch_norm: Literal["transductive", "support"] = "transductive",
        lr: float = 1.0,
        optimizer: Literal["adam", "sgd"] = "sgd",
        lr_final: float | None = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_shape, n_way, backbone=backbone, hidden=hidden, batch_norm=batch_norm, lr=lr,
                         optimizer=optimizer, lr_final=lr_final, **kwargs)
        if min(inner_steps, inner_batch, eval_inner_steps, eval_inner_batch or 1) < 1 or inner_lr <= 0:
            raise ConfigError("model.inner_steps, inner_batch, eval_inner_steps and eval_inner_batch must be >= 1 and "
                              f"inner_lr > 0 (got {inner_steps}, {inner_batch}, {eval_inner_steps}, "
                              f"{eval_inner_batch}, {inner_lr})")

    def inner_train(self, x: Tensor, y: Tensor, steps: int, batch: int | None, generator: torch.Generator) -> Params:
        """W = SGD_k(L, θ): ``steps`` optimiser steps from θ on shuffled mini-batches of one task's (x, y)."""
        hp = self.hparams
        W = {k: p.detach().clone().requires_grad_() for k, p in self.meta_parameters().items()}
        if hp.inner_optimizer == "adam":
            optimizer = torch.optim.Adam(W.values(), lr=hp.inner_lr, betas=(0.0, 0.999))
        else:
            optimizer = torch.optim.SGD(W.values(), lr=hp.inner_lr)
        batch = min(batch or len(x), len(x))
        order = torch.empty(0, dtype=torch.long)
        with torch.enable_grad():
            for _ in range(steps):
                if len(order) < batch:  # a new pass over the data
                    order = torch.cat([order, torch.randperm(len(x), generator=generator)])
                i, order = order[:batch], order[batch:]
                loss = self.loss(self.f(W, x[i]), y[i])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return {k: w.detach() for k, w in W.items()}

    def adapt_each(self, episode: Episode, steps: int, batch: int | None, seed: int) -> tuple[list[Params], Tensor]:
        """W_τ for every task of the batch, and f_W_τ(query_τ) [T, NQ, N]."""
        adapted, outputs = [], []
        for t, (support, labels, query) in enumerate(zip(episode.support, episode.support_labels, episode.query)):
            generator = torch.Generator().manual_seed(seed * len(episode.support) + t)
            W = self.inner_train(support, labels, steps, batch, generator)
            with torch.no_grad():
                outputs.append(self.query_outputs(W, support, query))
            adapted.append(W)
        return adapted, torch.stack(outputs)

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        hp = self.hparams
        adapted, outputs = self.adapt_each(episode, hp.inner_steps, hp.inner_batch, seed=self.global_step)
        theta = self.meta_parameters()
        W_mean = {k: torch.stack([W[k] for W in adapted]).mean(0) for k in theta}  # mean_τ W_τ
        loss = sum(0.5 * (theta[k] - W_mean[k]).pow(2).sum() for k in theta)  # ∇_θ = θ − W̄
        return loss, outputs

    def predict(self, episode: Episode) -> Tensor:
        hp = self.hparams
        return self.adapt_each(episode, hp.eval_inner_steps, hp.eval_inner_batch, seed=0)[1]
