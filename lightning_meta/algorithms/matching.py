"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, "Matching Networks for One Shot
Learning", NeurIPS 2016).

A query x̂ is labelled by attention over the support set: ŷ = Σ_i a(x̂, x_i) y_i with y_i one-hot and
a(x̂, x_i) = softmax_i s · cos(f(x̂), g(x_i)); the loss is −log ŷ of the true class. In the simple version
f = g = f_θ. Full Context Embeddings (FCE, the paper's appendix) make both depend on the whole support set S:

    g(x_i, S) = h→_i + h←_i + g'(x_i)                     a bidirectional LSTM over the support embeddings g'(x_i)
    r_{k−1} = Σ_i softmax_i(h_{k−1} · g(x_i)) g(x_i)       K processing steps of the attention LSTM,
    ĥ_k, c_k = LSTM(f'(x̂), [h_{k−1}, r_{k−1}], c_{k−1})   from h_0 = c_0 = 0 (so r_0 is the mean of the g(x_i))
    h_k = ĥ_k + f'(x̂)
    f(x̂, S) = h_K

where f' = g' = f_θ.

The paper's attention has s = 1. A cosine lies in [−1, 1], so then the attention can never be sharp: in 5-way
1-shot the true class gets at most e / (e + 4/e) ≈ 0.65 (cosines +1 and −1), and e / (e + 4) ≈ 0.40 with the
nonnegative (ReLU) embeddings of conv4, so the loss never saturates and keeps pushing on solved episodes, and the
literal formula falls well short of the paper's Omniglot results (RESULTS.md, rows "matching, s = 1"). ``scale``
(s) and ``learn_scale`` give the softmax an inverse temperature, fixed or learned from its initial value, as the
metric scaling of Oreshkin et al. (TADAM, NeurIPS 2018).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import attention_scale, register
from lightning_meta.algorithms.metric import MetricLearner, logsumexp_by_class
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError


class FullContextEmbeddings(nn.Module):
    """g(x_i, S) and f(x̂, S) of the paper's appendix, on embeddings of size D."""

    def __init__(self, D: int, processing_steps: int) -> None:
        super().__init__()
        self.g_lstm = nn.LSTM(D, D, batch_first=True, bidirectional=True)
        # The attention LSTM reads f'(x̂) and the state [h, r]: its gates are linear in (f'(x̂), r, h), which is an
        # LSTM cell with input [f'(x̂), r] and hidden state h.
        self.f_lstm = nn.LSTMCell(2 * D, D)
        self.processing_steps = processing_steps

    def g(self, g_prime: Tensor) -> Tensor:  # [T, NK, D] -> [T, NK, D]
        h = self.g_lstm(g_prime)[0]  # [T, NK, 2D]: h→_i and h←_i
        h_forward, h_backward = h.chunk(2, dim=-1)
        return h_forward + h_backward + g_prime

    def f(self, f_prime: Tensor, g: Tensor) -> Tensor:  # [T, NQ, D], [T, NK, D] -> [T, NQ, D]
        T, NQ, D = f_prime.shape
        x = f_prime.reshape(T * NQ, D)
        h, c = torch.zeros_like(x), torch.zeros_like(x)  # h_0, c_0
        for _ in range(self.processing_steps):
            attention = torch.softmax(h.view(T, NQ, D) @ g.transpose(1, 2), dim=-1)  # [T, NQ, NK]
            r = (attention @ g).reshape(T * NQ, D)  # r_{k-1}
            h_hat, c = self.f_lstm(torch.cat([x, r], dim=-1), (h, c))
            h = h_hat + x  # h_k = ĥ_k + f'(x̂)
        return h.view(T, NQ, D)


@register
class MatchingNetwork(MetricLearner):
    """Matching Network, with Full Context Embeddings if ``fce``.

    Args:
        image_shape: input shape, e.g. (1, 28, 28).
        fce: use Full Context Embeddings.
        processing_steps: K, the steps of the attention LSTM of f (with ``fce``).
        scale: s, the inverse temperature of the attention softmax (1: the paper's formula).
        learn_scale: learn s, starting from ``scale``.
        backbone: f_θ (``conv4``: the paper's 64-d Omniglot embedding); it must give vectors.
        hidden: filters (or units) of the backbone.
        **kwargs: optimiser settings, see :class:`MetricLearner`.
    """

    name = "matching"

    def __init__(self, image_shape: tuple[int, ...], fce: bool = False, processing_steps: int = 5,
                 scale: float = 1.0, learn_scale: bool = False, backbone: str = "conv4", hidden: int = 64,
                 **kwargs: Any) -> None:
        super().__init__(image_shape, backbone=backbone, hidden=hidden, **kwargs)
        if processing_steps < 1:
            raise ConfigError(f"model.processing_steps must be at least 1 (got {processing_steps})")
        if len(self.z_shape) != 1:
            raise ConfigError(f"Matching Networks need embedding vectors, but backbone {backbone!r} gives feature "
                              f"maps {self.z_shape}; choose conv4")
        self.fce = FullContextEmbeddings(self.z_shape[0], processing_steps) if fce else None
        self.scale = attention_scale(scale, learn_scale)

    def context_embeddings(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """g(x_i, S) [T, NK, D] and f(x̂, S) [T, NQ, D]: f_θ's embeddings, through FCE if ``fce``."""
        g, f = self.embed(episode)  # g'(x_i) [T, NK, D], f'(x̂) [T, NQ, D]
        if self.fce is not None:
            g = self.fce.g(g)
            f = self.fce.f(f, g)
        return g, f

    def features(self, episode: Episode) -> tuple[Tensor, Tensor]:
        g, f = self.context_embeddings(episode)
        return g.detach(), f.detach()

    def predict(self, episode: Episode) -> Tensor:
        g, f = self.context_embeddings(episode)
        cosine = F.cosine_similarity(f[:, :, None], g[:, None], dim=-1)  # cos(f(x̂), g(x_i)), [T, NQ, NK]
        log_a = (self.scale * cosine).log_softmax(dim=-1)  # log a(x̂, x_i)
        return logsumexp_by_class(log_a, episode.support_labels, episode.n_way)  # log ŷ_n = log Σ_{y_i = n} a
