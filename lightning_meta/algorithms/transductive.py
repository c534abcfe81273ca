"""Transductive inference: an episode's queries are classified together, each prediction using the unlabelled
queries as well as the labelled support set. An evaluation setting of the embedding learners (``model.inference``),
applied to the features they classify by; nothing here is trained.

BD-CSPN (Liu, Song & Qin, "Prototype Rectification for Few-Shot Learning", ECCV 2020):

    ξ = mean_{x ∈ S} x − mean_{x ∈ Q} x,   x_q ← x_q + ξ              the cross-class bias: queries shifted to S
    P_n = mean of class n's support features                          basic prototypes
    ŷ_q = argmax_n cos(x_q, P_n)                                      pseudo-labels
    S' = S ∪ {the Z queries with ŷ_q = n closest to P_n, each n}     (all of them: Z None)
    P'_n = Σ_{x ∈ S'_n} w_x x,  w_x = softmax_{x ∈ S'_n}(ε cos(x, P_n))   rectified prototypes (ε = 10)
    scores_{q,n} = ε cos(x_q, P'_n)

TIM-GD (Boudiaf, Ziko, Rony, Dolz, Piantanida & Ben Ayed, "Transductive Information Maximization for Few-Shot
Learning", NeurIPS 2020), on L2-normalised features z and class weights W initialised at the support's class means:

    logits_{i,n} = τ (z_i · w_n − ½|w_n|² − ½|z_i|²)       τ = 15
    L(W) = λ CE(support) − (α H(Y_Q) − β H(Y_Q | X_Q))     λ = 0.1, α = 1, β = 0.1
    H(Y_Q) = −Σ_n p̂_n log p̂_n,  p̂_n = mean_q p_{q,n};    H(Y_Q | X_Q) = −mean_q Σ_n p_{q,n} log p_{q,n}
    W ← Adam(∇_W L), learning rate 1e-4, 1,000 iterations; scores = logits of the queries

The settings are those of the authors' code. docs/algorithms.md ("Transductive inference") names the departures.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_meta.algorithms.prototypes import class_means, cosine
from lightning_meta.errors import ConfigError
from lightning_meta.precision import autocast_off


def bd_cspn(z_support: Tensor, support_labels: Tensor, z_query: Tensor, n_way: int, epsilon: float = 10.0,
            top: int | None = None) -> Tensor:
    """BD-CSPN's query scores ε cos(x_q, P'_n) [T, NQ, N] from support [T, NK, D] and query [T, NQ, D] features.
    ``top`` is Z, the pseudo-labelled queries each class takes in (None: every query pseudo-labelled to it)."""
    xi = z_support.mean(1, keepdim=True) - z_query.mean(1, keepdim=True)  # ξ [T, 1, D]
    z_query = z_query + xi
    P = class_means(z_support, support_labels, n_way)  # basic prototypes [T, N, D]
    cos_query = cosine(z_query, P)  # [T, NQ, N]
    pseudo = F.one_hot(cos_query.argmax(-1), n_way).transpose(1, 2).bool()  # ŷ_q = n, [T, N, NQ]
    if top is not None:
        closeness = cos_query.transpose(1, 2).masked_fill(~pseudo, float("-inf"))  # [T, N, NQ]
        rank = closeness.argsort(-1, descending=True).argsort(-1)  # each query's rank within its class
        pseudo &= rank < top
    members = torch.cat([F.one_hot(support_labels, n_way).transpose(1, 2).bool(), pseudo], dim=-1)  # S'_n [T, N, M]
    x = torch.cat([z_support, z_query], dim=1)  # S ∪ Q [T, M, D]
    w = (epsilon * cosine(x, P).transpose(1, 2)).masked_fill(~members, float("-inf")).softmax(-1)  # w_x [T, N, M]
    rectified = w @ x  # P'_n [T, N, D]
    return epsilon * cosine(z_query, rectified)


def tim_logits(z: Tensor, W: Tensor, temperature: float) -> Tensor:
    """τ (z_i · w_n − ½|w_n|² − ½|z_i|²): z [T, M, D], W [T, N, D] -> [T, M, N]."""
    return temperature * (z @ W.transpose(1, 2) - 0.5 * W.pow(2).sum(-1)[:, None] - 0.5 * z.pow(2).sum(-1)[..., None])


def tim_loss(logits_support: Tensor, support_labels: Tensor, logits_query: Tensor,
             weights: tuple[float, float, float]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """TIM's objective, summed over the tasks, and its three terms per task [T]: the support cross-entropy, the
    marginal entropy H(Y_Q) and the conditional entropy H(Y_Q | X_Q). ``weights`` are (λ, α, β)."""
    ce = F.cross_entropy(logits_support.transpose(1, 2), support_labels, reduction="none").mean(1)  # [T]
    p = logits_query.softmax(-1)  # p_{q,n} [T, NQ, N]
    conditional = -(p * logits_query.log_softmax(-1)).sum(-1).mean(1)  # H(Y_Q | X_Q) [T]
    marginal_p = p.mean(1)  # p̂ [T, N]
    marginal = -(marginal_p * marginal_p.clamp_min(1e-12).log()).sum(-1)  # H(Y_Q) [T]
    lam, alpha, beta = weights
    loss = (lam * ce - (alpha * marginal - beta * conditional)).sum()
    return loss, ce, marginal, conditional


def tim(z_support: Tensor, support_labels: Tensor, z_query: Tensor, n_way: int, temperature: float = 15.0,
        weights: tuple[float, float, float] = (0.1, 1.0, 0.1), lr: float = 1e-4, iterations: int = 1000) -> Tensor:
    """TIM-GD's query logits [T, NQ, N] after ``iterations`` Adam steps on the class weights W. Every task has its
    own W; the loss is a sum over tasks, so each W gets its own task's gradient."""
    with torch.inference_mode(False), torch.enable_grad():  # the features may come from an inference-mode test
        z_s, z_q = F.normalize(z_support.clone(), dim=-1), F.normalize(z_query.clone(), dim=-1)
        W = class_means(z_s, support_labels.clone(), n_way).requires_grad_(True)  # [T, N, D]
        adam = torch.optim.Adam([W], lr=lr)
        for _ in range(iterations):
            loss = tim_loss(tim_logits(z_s, W, temperature), support_labels.clone(), tim_logits(z_q, W, temperature),
                            weights)[0]
            adam.zero_grad()
            loss.backward()
            adam.step()
        return tim_logits(z_q, W.detach(), temperature)


INFERENCES = {"bd_cspn": bd_cspn, "tim": tim}  # model.inference -> rule; "none": the learner's own classifier


def check_inference(inference: str, options: dict[str, Any] | None) -> None:
    """Raises a ConfigError for an unknown ``model.inference`` or an option its rule does not take."""
    if inference != "none" and inference not in INFERENCES:
        raise ConfigError(f"model.inference must be none, {' or '.join(INFERENCES)} (got {inference!r})")
    if options and inference == "none":
        raise ConfigError("model.inference_options are settings of a transductive rule; set model.inference too")
    if options:
        taken = list(inspect.signature(INFERENCES[inference]).parameters)[4:]
        unknown = sorted(set(options) - set(taken))
        if unknown:
            raise ConfigError(f"model.inference_options: {inference} takes {', '.join(taken)}, not "
                              f"{', '.join(unknown)}")


def transductive_scores(inference: str, options: dict[str, Any] | None, z_support: Tensor, support_labels: Tensor,
                        z_query: Tensor, n_way: int) -> Tensor:
    """The query scores [T, NQ, N] of rule ``inference`` on features [T, NK, D] and [T, NQ, D], in float32."""
    with autocast_off(z_query.device.type):
        return INFERENCES[inference](z_support.float(), support_labels, z_query.float(), n_way, **(options or {}))
