"""Small networks applied to every coordinate of a weight tensor, with hand-written backward passes.

Meta Networks' meta-learners (metanet.py) run an LSTM (d) and an MLP (m) of 20 units on each of the ~150,000
coordinates of the conv weights, for every task. Through autograd, every elementwise op of those networks writes and
reads back a tensor of [coordinates, 80] floats, and the LSTM's tanh is slow on the CPU: the two took 1.9 s of a 2.0 s
training step on a 2-core AVX2 CPU. Here both run over chunks of coordinates that stay in the cache, with the
coordinates in the last dimension, and the LSTM's tanh is computed as 2σ(2x) − 1. The LSTM keeps its activations for
the backward pass; the MLP, whose activations are cheap, computes them again.

The inputs are the meta-learners' detached gradient features and get no gradient; the outputs are differentiable
in the networks' parameters. Both compute in float32, also under autocast.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

CHUNK = 8192  # coordinates at a time


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


class _MLPFunction(torch.autograd.Function):
    """x [N, 2] -> y [N]: Linear, ReLU, Linear, ReLU, Linear to 1. The backward pass runs each chunk's forward pass
    again."""

    @staticmethod
    def hidden(x1: Tensor, W1: Tensor, W2: Tensor) -> tuple[Tensor, Tensor]:
        """x1 [3, C] (features and ones), W1 [H, 3] and W2 [H, H + 1] with their biases last -> the two hidden
        layers, the first with a row of ones [H + 1, C], the second [H, C]."""
        h1 = x1.new_ones(W1.shape[0] + 1, x1.shape[1])
        torch.mm(W1, x1, out=h1[:-1]).relu_()
        return h1, (W2 @ h1).relu_()

    @staticmethod
    def forward(ctx: Any, x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, w3: Tensor,
                b3: Tensor) -> Tensor:
        ctx.dtypes = [t.dtype for t in (W1, b1, W2, b2, w3, b3)]
        x, W1, W2, w3 = _float32(x, torch.cat([W1, b1[:, None]], 1), torch.cat([W2, b2[:, None]], 1),
                                 torch.cat([w3, b3[:, None]], 1))
        ctx.save_for_backward(x, W1, W2, w3)
        return torch.cat([(w3[:, :-1] @ _MLPFunction.hidden(x1, W1, W2)[1])[0] for x1 in _chunks(x)]) + w3[0, -1]

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, W1, W2, w3 = ctx.saved_tensors
        dy = dy.float()
        dW1, dW2, dw3 = (torch.zeros_like(t) for t in (W1, W2, w3))
        for x1, dyc in zip(_chunks(x), dy.split(CHUNK)):
            h1, h2 = _MLPFunction.hidden(x1, W1, W2)  # recomputed
            dw3[:, :-1].addmm_(dyc[None], h2.T)
            dh2 = torch.ops.aten.threshold_backward(w3[:, :-1].T * dyc, h2, 0)  # [H, C]
            dW2.addmm_(dh2, h1.T)
            dh1 = torch.ops.aten.threshold_backward(W2[:, :-1].T @ dh2, h1[:-1], 0)
            dW1.addmm_(dh1, x1.T)
        dw3[0, -1] = dy.sum()
        grads = (dW1[:, :-1], dW1[:, -1], dW2[:, :-1], dW2[:, -1], dw3[:, :-1], dw3[:, -1])
        return (None, *(grad.to(dtype) for grad, dtype in zip(grads, ctx.dtypes)))


def lstm(cell: nn.LSTMCell, head: nn.Linear, x: Tensor) -> Tensor:
    """head(h_S) after ``cell`` reads x[0], ..., x[S-1] from a zero state, for every coordinate: [S, N, 2] -> [N]."""
    with torch.autocast(x.device.type, enabled=False):
        return _LSTMFunction.apply(x, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, head.weight,
                                   head.bias)


def mlp(net: nn.Sequential, x: Tensor) -> Tensor:
    """``net`` (Linear, ReLU, Linear, ReLU, Linear to 1) for every coordinate: [N, 2] -> [N]."""
    first, _, second, _, out = net
    with torch.autocast(x.device.type, enabled=False):
        return _MLPFunction.apply(x, first.weight, first.bias, second.weight, second.bias, out.weight, out.bias)
