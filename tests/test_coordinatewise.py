"""The coordinate-wise LSTM and MLP with hand-written backward passes against nn.LSTMCell and nn.Sequential under
autograd: outputs and parameter gradients, over several chunks with a partial last one, and under autocast."""

import pytest
import torch
from torch import nn

from lightning_meta.algorithms import coordinatewise

N, H = 23, 5  # coordinates, hidden units


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(coordinatewise, "CHUNK", 7)  # 23 coordinates: chunks of 7, 7, 7 and 2


def lstm_by_autograd(cell: nn.LSTMCell, head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    h = c = x.new_zeros(x.shape[1], cell.hidden_size)
    for x_s in x:
        h, c = cell(x_s, (h, c))
    return head(h)[:, 0]


def mlp_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU(), nn.Linear(H, 1))


def outputs_and_gradients(y: torch.Tensor, params: list[torch.Tensor], weights: torch.Tensor):
    return y.detach(), torch.autograd.grad((y * weights).sum(), params)


@pytest.mark.parametrize("steps", [1, 4])
def test_lstm_matches_lstm_cell_under_autograd(steps):
    torch.manual_seed(0)
    cell, head = nn.LSTMCell(2, H).double(), nn.Linear(H, 1).double()
    params = [*cell.parameters(), *head.parameters()]
    x, weights = torch.randn(steps, N, 2, dtype=torch.float64), torch.randn(N, dtype=torch.float64)
    y_ref, g_ref = outputs_and_gradients(lstm_by_autograd(cell, head, x), params, weights)
    y, g = outputs_and_gradients(coordinatewise.lstm(cell, head, x), params, weights)
    assert torch.allclose(y.double(), y_ref, atol=1e-6)  # the fused functions compute in float32
    for a, b in zip(g, g_ref, strict=True):
        assert a.dtype == torch.float64 and torch.allclose(a, b, atol=1e-5), (a, b)
    # W_hh only acts from the second step on; every other gradient is checked on non-trivial values
    assert [bool(b.abs().max() > 1e-3) for b in g_ref] == [True, steps > 1, True, True, True, True]


def test_mlp_matches_sequential_under_autograd():
    torch.manual_seed(0)
    net = mlp_net().double()
    x, weights = torch.randn(N, 2, dtype=torch.float64), torch.randn(N, dtype=torch.float64)
    y_ref, g_ref = outputs_and_gradients(net(x)[:, 0], list(net.parameters()), weights)
    y, g = outputs_and_gradients(coordinatewise.mlp(net, x), list(net.parameters()), weights)
    assert torch.allclose(y.double(), y_ref, atol=1e-6)
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a, b)
    assert all(b.abs().max() > 1e-3 for b in g_ref)


def test_float32_under_bfloat16_autocast():
    """Autocast does not reach inside: the same float32 outputs as without it."""
    torch.manual_seed(0)
    cell, head, net = nn.LSTMCell(2, H), nn.Linear(H, 1), mlp_net()
    x = torch.randn(3, N, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_lstm, y_mlp = coordinatewise.lstm(cell, head, x), coordinatewise.mlp(net, x[0])
    assert y_lstm.dtype == y_mlp.dtype == torch.float32
    assert torch.allclose(y_lstm, lstm_by_autograd(cell, head, x), atol=1e-6)
    assert torch.allclose(y_mlp, net(x[0])[:, 0], atol=1e-6)
