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

from lightning_meta.algorithms.base import InnerStepPictures, register
from lightning_meta.algorithms.gradient import GradientLearner, Params
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError

ADAM_BETA2, ADAM_EPS = 0.999, 1e-8


@register
class Reptile(GradientLearner, InnerStepPictures):
    """Reptile; query accuracy after adaptation (``train/acc``) is measured on the query set, which the inner
    loop never sees.

    Args:
        image_shape: input shape, e.g. (1, 28, 28).
        n_way: N output units; 0 for regression.
        backbone: the feature network (``conv4`` in the paper's Omniglot runs).
        hidden: its filters (or units).
        inner_optimizer: ``adam`` (the paper's, with β1 = 0 as in its code) or ``sgd``. As in the paper's code,
            Adam's second moment and step count carry over from task to task and step to step (they are the
            buffers ``inner_v`` and ``inner_t``, so checkpoints keep them): every task of a meta-batch starts
            from the stored moment, which then becomes the mean of the tasks' moments (the paper's code runs the
            tasks one after another instead). Evaluation starts from it and leaves it unchanged.
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
        size = sum(p.numel() for p in self.meta_parameters().values())
        self.register_buffer("inner_v", torch.zeros(size))  # Adam's second moment of θ's coordinates, flattened
        self.register_buffer("inner_t", torch.zeros((), dtype=torch.long))  # Adam steps taken in training

    def inner_train(self, theta: Params, v: Params, x: Tensor, y: Tensor, batches: Tensor) -> tuple[Params, Params]:
        """W = SGD_k(L, θ) on one task: one SGD or Adam step per row of ``batches`` (written out as tensor
        operations, so that the tasks of a meta-batch run together under vmap), starting from Adam's second
        moment v; returns W and the moment after the steps."""
        hp = self.hparams
        W = theta
        for s, i in enumerate(batches, start=1):
            t = self.inner_t.double() + s  # Adam's step number, as a tensor: reading it would wait for the device
            g = self.inner_grad(W, x[i], y[i])
            if hp.inner_optimizer == "sgd":
                W = {k: p - hp.inner_lr * g[k] for k, p in W.items()}
            else:  # Adam with β1 = 0 (so no first moment), β2 = 0.999: the paper's code
                v = {k: ADAM_BETA2 * v[k] + (1 - ADAM_BETA2) * g[k].square() for k in W}
                W = {k: p - hp.inner_lr * g[k] / ((v[k] / (1 - ADAM_BETA2**t)).sqrt() + ADAM_EPS) for k, p in W.items()}
        return W, v

    def adapt_each(self, episode: Episode, steps: int, batch: int | None) -> tuple[Params, Params, Tensor]:
        """W_τ and Adam's moment v_τ for every task of the batch (stacked: [T, ...] per parameter), and
        f_W_τ(query_τ) [T, NQ, N]."""
        batches = self.mini_batches(episode, steps, batch)  # [T, steps, B]
        theta, v = {k: p.detach() for k, p in self.meta_parameters().items()}, self.unflatten(self.inner_v)

        def task(x: Tensor, y: Tensor, query: Tensor, task_batches: Tensor) -> tuple[Params, Params, Tensor]:
            W, v_task = self.inner_train(theta, v, x, y, task_batches)
            return W, v_task, self.query_outputs(W, x, query)

        with torch.no_grad(), self.first_derivatives_only():
            return torch.func.vmap(task)(episode.support, episode.support_labels, episode.query, batches)

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        hp = self.hparams
        W, v, outputs = self.adapt_each(episode, hp.inner_steps, hp.inner_batch)
        if hp.inner_optimizer == "adam":  # the mean moment over the tasks of all ranks
            self.inner_v.copy_(self.mean_over_ranks(torch.cat([v[k].mean(0).flatten() for k in W])))
            self.inner_t += hp.inner_steps
        theta = self.meta_parameters()
        loss = sum(0.5 * (p - W[k].mean(0)).pow(2).sum() for k, p in theta.items())  # ∇_θ = θ − mean_τ W_τ
        return loss, outputs

    def predict(self, episode: Episode) -> Tensor:
        return self.predict_after(episode, self.eval_steps)

    def predict_after(self, episode: Episode, steps: int) -> Tensor:
        """Query predictions after the first ``steps`` of the evaluation's inner steps."""
        return self.adapt_each(episode, steps, self.hparams.eval_inner_batch)[2]

    @property
    def eval_steps(self) -> int:
        """Inner steps when validating and testing."""
        return self.hparams.eval_inner_steps
