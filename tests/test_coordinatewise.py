"""The coordinate-wise LSTM and MLP against nn.LSTMCell and nn.Sequential under autograd: outputs and parameter
gradients; the LSTM over several chunks with a partial last one, the MLP by pieces on the lines of preprocessed
gradients (also at its kinks) and through its layers off them; both under autocast."""

import pytest
import torch
from torch import nn

from lightning_meta.algorithms import coordinatewise
from lightning_meta.algorithms.metanet import preprocess

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


def mlp_inputs(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[n + 5, 2]: preprocessed gradients from 1e-9 to 10 in size, of either sign, and zero, on the three lines, then
    5 points off them."""
    g = torch.logspace(-9, 1, n, dtype=dtype) * torch.randn(n, dtype=dtype).sign()
    g[::7] = 0
    return torch.cat([preprocess(g), torch.rand(5, 2, dtype=dtype) * 2 - 1])


def test_mlp_matches_sequential_under_autograd():
    torch.manual_seed(0)
    net = mlp_net().double()
    x = mlp_inputs(200)
    on_lines = [(x[:, 0] == -1).sum(), (x[:, 1] == 1).sum(), (x[:, 1] == -1).sum()]
    assert all(count > 20 for count in on_lines) and sum(on_lines) == 200  # every line is used, and the points off
    weights = torch.randn(len(x), dtype=torch.float64)
    y_ref, g_ref = outputs_and_gradients(net(x)[:, 0], list(net.parameters()), weights)
    y, g = outputs_and_gradients(coordinatewise.mlp(net, x), list(net.parameters()), weights)
    assert torch.allclose(y.double(), y_ref, atol=1e-6)
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a, b)
    assert all(b.abs().max() > 1e-3 for b in g_ref)


@pytest.mark.parametrize("line", range(3))
def test_mlp_at_its_kinks(line):
    """On a line the MLP is exact at and around its kinks, where the pieces meet: the kinks are where a unit of
    nn.Sequential's forward pass is 0."""
    torch.manual_seed(line)
    net = mlp_net().double()
    fixed, value = coordinatewise.LINES[line]
    first, _, second = net[:3]
    params = [p.float() for p in net.parameters()]
    kinks = coordinatewise._pieces(*params, fixed, value)[0].double()
    kinks = kinks[kinks.abs() < 10]  # where the inputs are (far out, float32 cannot resolve t ± 1e-4)
    assert len(kinks) > H  # kinks of both layers
    t = torch.cat([kinks, kinks - 1e-4, kinks + 1e-4])
    x = torch.stack([torch.full_like(t, value), t][:: 1 if fixed == 0 else -1], dim=1)
    z1 = first(x[: len(kinks)])
    z2 = second(z1.relu())
    nearest_zero = torch.cat([z1, z2], dim=1).abs().min(dim=1).values
    assert nearest_zero.max() < 1e-5  # each kink is where a unit crosses 0
    assert torch.allclose(coordinatewise.mlp(net, x).double(), net(x)[:, 0], atol=1e-6)
    near = x[len(kinks) :]  # at a kink itself the gradient is either side's
    weights = torch.randn(len(near), dtype=torch.float64)
    y_ref, g_ref = outputs_and_gradients(net(near)[:, 0], list(net.parameters()), weights)
    y, g = outputs_and_gradients(coordinatewise.mlp(net, near), list(net.parameters()), weights)
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a, b)


