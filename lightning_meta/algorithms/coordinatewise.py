"""Small networks applied to every coordinate of a weight tensor, fast on the CPU.

Meta Networks' meta-learners (metanet.py) run an LSTM (d) and an MLP (m) of 20 units on each of the ~150,000
coordinates of the conv weights, for every task (m for every support example). Through autograd, every elementwise op
of those networks writes and reads back a tensor of [coordinates, 80] floats, and the LSTM's tanh is slow on the CPU:
through autograd the two take most of a training step (RESULTS.md, "Meta Networks' meta-learners").

The LSTM runs over chunks of coordinates that stay in the cache, with the coordinates in the last dimension, keeps its
activations for a hand-written backward pass, and computes its tanh as 2σ(2x) − 1.

The MLP is computed exactly, by pieces. Its inputs, gradients preprocessed by metanet.preprocess, lie on three lines:
(−1, e^p g) where |g| < e^−p, and (log|g| / p, ±1) elsewhere (all but those within float32's ε of |g| = e^−p). Along
a line a ReLU MLP is piecewise linear in the free coordinate t, with a kink where a unit crosses 0 (at most H of the
first layer, and per piece between those at most H of the second: about 40 for m in practice). So the MLP is
evaluated once per piece, as y = a + c t with a and c differentiable in its weights, and each coordinate looks up its
piece: y costs a binary search and one multiply-add per coordinate, and the backward pass two sums per piece (of dy
and dy·t), instead of two 20 x 20 layers forward and backward per coordinate. Any input off the lines goes through the
layers as usual.

The inputs are the meta-learners' detached gradient features and get no gradient; the outputs are differentiable
in the networks' parameters. Both compute in float32, also under autocast.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lightning_meta.precision import autocast_off

CHUNK = 8192  # coordinates at a time, of the LSTM
LINES = ((0, -1.0), (1, 1.0), (1, -1.0))  # the lines (fixed feature, its value) of the MLP's inputs


def _float32(*tensors: Tensor) -> list[Tensor]:
    return [t.float() for t in tensors]


def _chunks(x: Tensor) -> list[Tensor]:
    """[..., N, 2] -> chunks [..., 3, C] along N: the two features and a row of ones (for the biases), coordinates
    last, so that every elementwise op is contiguous and each layer is one matrix product."""
    ones = x.new_ones(*x.shape[:-1], 1)
    return list(torch.cat([x, ones], dim=-1).transpose(-1, -2).contiguous().split(CHUNK, dim=-1))


class _LSTMFunction(torch.autograd.Function):
    """x [S, N, 2] -> y [N]: an LSTM cell (gates i, f, g, o as in nn.LSTMCell) reads x[0], ..., x[S-1] from a zero
    state; y is a linear head on its last h."""

    @staticmethod
    def steps(x1: Tensor, W: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]], Tensor]:
        """The LSTM over one chunk: x1 [S, 3, C] (features and ones), W [4H, 3 + H] = [W_ih, b_ih + b_hh, W_hh] ->
        z [S, 3 + H, C] (each step's input: features, ones and the previous h), per step (gates [4H, C] after their
        nonlinearities, c [H, C], tanh(c) [H, C]), and the last h [H, C]."""
        S, _, C = x1.shape
        H = W.shape[1] - 3
        # σ of the g-gate's pre-activation times 2 gives tanh = 2σ(2·) − 1: one sigmoid for all four gates
        scale = torch.ones(4 * H, 1, dtype=W.dtype, device=W.device)
        scale[2 * H : 3 * H] = 2
        W = W * scale
        z = x1.new_zeros(S, 3 + H, C)
        z[:, :3] = x1
        out, h = [], None
        for s in range(S):
            a = (W @ z[s] if s > 0 else W[:, :3] @ z[0, :3]).sigmoid_()  # h = 0 before the first step
            i, f, g, o = a.chunk(4)
            g.mul_(2).sub_(1)
            c = i * g
            if s > 0:
                c.addcmul_(f, out[-1][1])
            tc = (c * 2).sigmoid_().mul_(2).sub_(1)
            h = torch.mul(o, tc, out=z[s + 1, 3:]) if s + 1 < S else o * tc
            out.append((a, c, tc))
        return z, out, h

    @staticmethod
    def forward(ctx: Any, x: Tensor, W_ih: Tensor, W_hh: Tensor, b_ih: Tensor, b_hh: Tensor, w_out: Tensor,
                b_out: Tensor) -> Tensor:
        ctx.dtypes = [t.dtype for t in (W_ih, W_hh, b_ih, b_hh, w_out, b_out)]
        x, W, w_out, b_out = _float32(x, torch.cat([W_ih, (b_ih + b_hh)[:, None], W_hh], dim=1), w_out, b_out)
        y, saved = [], []
        for x1 in _chunks(x):
            z, out, h = _LSTMFunction.steps(x1, W)
            y.append(torch.addmm(b_out, w_out, h)[0])
            saved += [z, h, *(t for step in out for t in step)]
        ctx.save_for_backward(W, w_out, *saved)
        ctx.S = x.shape[0]
        return torch.cat(y)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        W, w_out, *saved = ctx.saved_tensors
        W_hh = W[:, 3:]
        dy = dy.float()
        dW, dw_out = torch.zeros_like(W), torch.zeros_like(w_out)
        per_chunk = 2 + 3 * ctx.S
        for k, dyc in enumerate(dy.split(CHUNK)):
            z, h, *flat = saved[k * per_chunk : (k + 1) * per_chunk]
            out = [flat[3 * s : 3 * s + 3] for s in range(ctx.S)]
            dw_out.addmm_(dyc[None], h.T)
            dh, dc = w_out.T * dyc, torch.zeros_like(h)  # [H, C]
            for s in reversed(range(len(out))):
                a, c, tc = out[s]
                i, f, g, o = a.chunk(4)
                dgates = torch.empty_like(a)  # w.r.t. the pre-activations
                di, df, dg, do = dgates.chunk(4)
                dc.addcmul_(dh, (1 - tc * tc).mul_(o))
                torch.mul(dh, tc, out=do).mul_(o - o * o)
                torch.mul(dc, g, out=di).mul_(i - i * i)
                torch.mul(dc, i, out=dg).mul_(1 - g * g)
                if s > 0:
                    torch.mul(dc, out[s - 1][1], out=df).mul_(f - f * f)
                    dW.addmm_(dgates, z[s].T)
                    dc.mul_(f)
                    dh = W_hh.T @ dgates
                else:  # the first step reads c = h = 0: no gradient for f or W_hh, and none to pass back
                    df.zero_()
                    dW[:, :3].addmm_(dgates, z[0, :3].T)
        dW_ih, db, dW_hh = dW.split([2, 1, W_hh.shape[1]], dim=1)
        grads = (dW_ih, dW_hh, db[:, 0], db[:, 0], dw_out, dy.sum()[None])
        return (None, *(grad.to(dtype) for grad, dtype in zip(grads, ctx.dtypes)))


class _Pieces(torch.autograd.Function):
    """y_n = a[k_n] + c[k_n] t_n: each coordinate's piece k [N] and position t [N] on its line, the pieces' offsets
    and slopes a, c [K] -> y [N]. The backward pass sums dy and dy·t over each piece's coordinates."""

    @staticmethod
    def forward(ctx: Any, k: Tensor, t: Tensor, a: Tensor, c: Tensor) -> Tensor:
        ctx.save_for_backward(k, t)
        ctx.pieces = a.shape[0]
        return a.take(k).addcmul_(c.take(k), t)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        k, t = ctx.saved_tensors
        dy = dy.double()  # sums of up to millions of terms
        da = dy.new_zeros(ctx.pieces).scatter_add_(0, k, dy)
        dc = dy.new_zeros(ctx.pieces).scatter_add_(0, k, dy * t)
        return None, None, da.to(t.dtype), dc.to(t.dtype)


def _inside(kinks: Tensor) -> Tensor:
    """A point inside each of the pieces that sorted kinks [K - 1] cut the real line into: [K]."""
    if kinks.numel() == 0:
        return kinks.new_zeros(1)
    return torch.cat([kinks[:1] - 1, (kinks[1:] + kinks[:-1]) / 2, kinks[-1:] + 1])


def _pieces(W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, w3: Tensor, b3: Tensor, fixed: int,
            value: float) -> tuple[Tensor, Tensor, Tensor]:
    """The MLP on the line x[fixed] = value, x[1 - fixed] = t: its kinks [K - 1] in t, ascending, and on each piece
    between them y = a + c t, a and c [K] differentiable in the weights.

    A unit of the first layer is linear in t, z1 = α1 + t β1, and kinks where it crosses 0. Between those kinks the
    second layer's units are linear in t too and kink where they cross 0. On a piece between consecutive kinks both
    layers' active units D1, D2 are fixed, and y = w3 D2 (W2 D1 (α1 + t β1) + b2) + b3."""
    alpha1, beta1 = W1[:, fixed] * value + b1, W1[:, 1 - fixed]  # [H]
    with torch.no_grad():
        r = -alpha1 / beta1
        r = r[r.isfinite()].sort().values  # the first layer's kinks
        D1 = alpha1 + _inside(r)[:, None] * beta1 > 0  # [len(r) + 1, H] on each of its pieces
        s = -((D1 * alpha1) @ W2.T + b2) / ((D1 * beta1) @ W2.T)  # where the second layer's units cross 0 there
        inf = r.new_ones(1) * math.inf
        lo, hi = torch.cat([-inf, r])[:, None], torch.cat([r, inf])[:, None]
        kinks = torch.cat([r, s[(lo < s) & (s < hi)]]).sort().values
        z1 = alpha1 + _inside(kinks)[:, None] * beta1  # [K, H]
        D1, D2 = z1 > 0, z1.clamp(min=0) @ W2.T + b2 > 0
    a = (((D1 * alpha1) @ W2.T + b2) * D2) @ w3[0] + b3
    c = (((D1 * beta1) @ W2.T) * D2) @ w3[0]
    return kinks, a, c


def lstm(cell: nn.LSTMCell, head: nn.Linear, x: Tensor) -> Tensor:
    """head(h_S) after ``cell`` reads x[0], ..., x[S-1] from a zero state, for every coordinate: [S, N, 2] -> [N]."""
    with autocast_off(x.device.type):
        return _LSTMFunction.apply(x, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, head.weight,
                                   head.bias)


def mlp(net: nn.Sequential, x: Tensor) -> Tensor:
    """``net`` (Linear, ReLU, Linear, ReLU, Linear to 1) for every coordinate: [N, 2] -> [N]. Coordinates on the lines
    x[0] = −1, x[1] = 1 and x[1] = −1 are computed by pieces (see the module docstring), any others through ``net``."""
    first, _, second, _, out = net
    with autocast_off(x.device.type):
        x = x.float()
        W1, b1, W2, b2, w3, b3 = _float32(first.weight, first.bias, second.weight, second.bias, out.weight, out.bias)
        line = torch.full_like(x[:, 0], len(LINES), dtype=torch.long)  # the line of each coordinate, else len(LINES)
        for i, (fixed, value) in reversed(list(enumerate(LINES))):
            line.masked_fill_(x[:, fixed] == value, i)
        k, t = torch.zeros_like(line), torch.where(line == 0, x[:, 1], x[:, 0])  # piece and position on the line
        a, c = [], []
        for i, (fixed, value) in enumerate(LINES):
            kinks, a_i, c_i = _pieces(W1, b1, W2, b2, w3, b3, fixed, value)
            on = (line == i).nonzero()[:, 0]
            k[on] = torch.searchsorted(kinks, t[on]) + sum(map(len, a))  # numbered across the lines
            a.append(a_i)
            c.append(c_i)
        y = _Pieces.apply(k, t, torch.cat(a), torch.cat(c))
        off = (line == len(LINES)).nonzero()[:, 0]
        if off.numel() == 0:
            return y
        h = torch.relu(torch.relu(x[off] @ W1.T + b1) @ W2.T + b2)
        return y.index_put((off,), (h @ w3.T + b3)[:, 0])
