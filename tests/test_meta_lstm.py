import copy
import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_meta import ConfigError, Episode, MetaLSTM, SyntheticDataModule
from lightning_meta.algorithms.meta_lstm import preprocess


def test_preprocessing_equals_the_formula_on_both_sides_of_the_threshold():
    """p = 10, threshold e^-10 = 4.54e-5: (log|x| / 10, sign x) above it, (-1, e^10 x) below; values by hand."""
    x = torch.tensor([2.0, -1e-3, 1e-4, 1e-6, -2e-5, 0.0], dtype=torch.float64)
    expected = torch.tensor([
        [0.0693147181, 1.0],  # log 2 / 10
        [-0.6907755279, -1.0],  # log 1e-3 / 10
        [-0.9210340372, 1.0],  # log 1e-4 / 10, just above the threshold
        [-1.0, 0.0220264658],  # 22026.4658 * 1e-6
        [-1.0, -0.4405293159],
        [-1.0, 0.0],
    ], dtype=torch.float64)  # fmt: skip
    assert torch.allclose(preprocess(x, 10.0), expected, atol=1e-9)


def hold_gates(model: MetaLSTM, alpha: float) -> None:
    """f_t = 1 and i_t = α whatever the inputs: zero gate weights, biases +50 (σ = 1 in float64) and logit α."""
    with torch.no_grad():
        for gate, bias in ((model.W_F, 50.0), (model.W_I, math.log(alpha / (1 - alpha)))):
            gate.weight.zero_()
            gate.bias.fill_(bias)


def sgd(net: nn.Module, support: torch.Tensor, labels: torch.Tensor, alpha: float, steps: int) -> nn.Module:
    """A copy of ``net`` after ``steps`` steps of torch.optim.SGD on the whole support set."""
    net = copy.deepcopy(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=alpha)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(support), labels).backward()
        optimizer.step()
    return net


def small_episode(T: int, N: int = 3, K: int = 2, Q: int = 2) -> Episode:
    torch.manual_seed(1)
    return Episode(torch.randn(T, N * K, 1, 16, 16, dtype=torch.float64),
                   torch.arange(N).repeat_interleave(K).expand(T, -1),
                   torch.randn(T, N * Q, 1, 16, 16, dtype=torch.float64),
                   torch.arange(N).repeat_interleave(Q).expand(T, -1), N)


def test_gates_held_at_one_and_alpha_reproduce_plain_sgd():
    """θ_T and the query scores of each of two tasks equal those of torch.optim.SGD (lr α) on a copy of the
    learner: batch norm on the batch at hand, T = 3 updates on the whole support set."""
    torch.manual_seed(0)
    alpha, steps = 0.1, 3
    model = MetaLSTM((1, 16, 16), n_way=3, hidden=4, inner_steps=steps).double()
    hold_gates(model, alpha)
    episode = small_episode(T=2)
    with torch.no_grad():
        theta = model.adapt(episode, steps, None)
        scores = model.query_scores(theta, episode)
    theta_0 = torch.cat([p.detach().flatten() for p in model.net.parameters()])
    for task in range(2):
        net = sgd(model.net, episode.support[task], episode.support_labels[task], alpha, steps)
        expected = torch.cat([p.detach().flatten() for p in net.parameters()])
        assert torch.allclose(theta[task], expected, atol=1e-12, rtol=1e-10)
        assert torch.allclose(scores[task], net(episode.query[task]).detach(), atol=1e-12, rtol=1e-10)
        assert (expected - theta_0).abs().max() > 1e-3  # the learner did move


def test_no_second_order_terms_reach_theta_0():
    """With the gates held, θ_T = θ_0 − α Σ_t ∇_t where the ∇_t are detached inputs, so dθ_T/dθ_0 = I and the
    meta-gradient of θ_0 is the query-loss gradient at θ_T (computed here on an SGD copy of the learner).
    Had ∇_t been left attached, the Hessian terms of the two updates would enter."""
    torch.manual_seed(0)
    alpha, steps = 0.1, 2
    model = MetaLSTM((1, 16, 16), n_way=3, hidden=4, inner_steps=steps).double()
    hold_gates(model, alpha)
    episode = small_episode(T=1)
    loss, _ = model.meta_loss(episode)
    meta_gradient = torch.autograd.grad(loss, list(model.net.parameters()))
    net = sgd(model.net, episode.support[0], episode.support_labels[0], alpha, steps)
    expected = torch.autograd.grad(nn.functional.cross_entropy(net(episode.query[0]), episode.query_labels[0]),
                                   list(net.parameters()))
    for got, want in zip(meta_gradient, expected):
        assert torch.allclose(got, want, atol=1e-12, rtol=1e-9)


def paper_preprocess(x: float, p: float = 10.0) -> list[float]:
    """The paper's scaling of one scalar, written out: (log|x| / p, sign x) if |x| >= e^-p, else (-1, e^p x)."""
    if abs(x) >= math.exp(-p):
        return [math.log(abs(x)) / p, math.copysign(1.0, x)]
    return [-1.0, math.exp(p) * x]


def paper_meta_learner(model: MetaLSTM, net: nn.Module, support: torch.Tensor, labels: torch.Tensor,
                       batches: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """θ_T of one task by Ravi & Larochelle's equations, one coordinate and one step at a time.

    For each step t on the mini-batch ``batches[t]``: L_t and ∇_t of the learner at θ_{t−1} (a copy of ``net``
    holding θ_{t−1}, by autograd, detached); then for every coordinate k, the first LSTM layer on
    x = (preprocess(∇_t[k]), preprocess(L_t)):
        (i, f, g, o) = W_ih x + b_ih + W_hh h_{t−1} + b_hh,  c = σ(f) c_{t−1} + σ(i) tanh(g),  h_t = σ(o) tanh(c),
    and the second, whose cell state is θ:
        f_t = σ(W_F · [h_t, θ_{t−1}, f_{t−1}] + b_F),  i_t = σ(W_I · [h_t, θ_{t−1}, i_{t−1}] + b_I),
        θ_t = f_t θ_{t−1} − i_t ∇_t,
    from h = c = 0 and f_0 = i_0 = 0. Differentiable in the meta-learner's parameters and θ_0; also returns each
    step's forget gates (to show that they vary)."""
    lstm, W_F, W_I = model.lstm, model.W_F, model.W_I
    H = lstm.hidden_size
    theta = [p.flatten()[k] for p in net.parameters() for k in range(p.numel())]  # θ_0, one scalar per coordinate
    zero = torch.zeros(H, dtype=theta[0].dtype)
    state = [(zero, zero, theta[0].new_zeros(()), theta[0].new_zeros(())) for _ in theta]  # h, c, f, i
    forget_gates = []
    for b in batches:
        learner = copy.deepcopy(net)
        torch.nn.utils.vector_to_parameters(torch.stack(theta).detach(), learner.parameters())
        loss = nn.functional.cross_entropy(learner(support[b]), labels[b])
        grad = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(learner.parameters()))])
        loss, grad = loss.detach(), grad.detach()  # inputs only: no second derivatives
        new_theta, new_state, fs = [], [], []
        for k, (theta_k, (h, c, f, i)) in enumerate(zip(theta, state)):
            x = torch.tensor(paper_preprocess(grad[k].item()) + paper_preprocess(loss.item()), dtype=h.dtype)
            z = lstm.weight_ih @ x + lstm.bias_ih + lstm.weight_hh @ h + lstm.bias_hh
            z_i, z_f, z_g, z_o = z.split(H)
            c = torch.sigmoid(z_f) * c + torch.sigmoid(z_i) * torch.tanh(z_g)
            h = torch.sigmoid(z_o) * torch.tanh(c)
            f = torch.sigmoid(W_F.weight[0] @ torch.cat([h, theta_k[None], f[None]]) + W_F.bias[0])
            i = torch.sigmoid(W_I.weight[0] @ torch.cat([h, theta_k[None], i[None]]) + W_I.bias[0])
            new_theta.append(f * theta_k - i * grad[k])
            new_state.append((h, c, f, i))
            fs.append(f.detach())
        theta, state = new_theta, new_state
        forget_gates.append(torch.stack(fs))
    return torch.stack(theta), forget_gates


def random_gates(model: MetaLSTM) -> None:
    """Gate weights of order 1 (initially they are within ±0.01), so that f_t and i_t depend on h_t, θ_{t−1} and
    the previous gate; biases that put f near 0.7 and i near 0.1."""
    with torch.no_grad():
        for gate, bias in ((model.W_F, 1.0), (model.W_I, -2.0)):
            nn.init.normal_(gate.weight, std=1.0)
            gate.bias.fill_(bias)


@pytest.mark.parametrize("inner_batch", [None, 2])
def test_meta_learner_with_live_gates_follows_the_papers_equations(inner_batch):
    """θ_T, the query scores and the meta-gradient of every meta-learner parameter and of θ_0, for two tasks,
    3 updates (on the whole support set, or on mini-batches of 2), float64, against ``paper_meta_learner``."""
    torch.manual_seed(0)
    steps = 3
    model = MetaLSTM((1, 16, 16), n_way=3, hidden=2, inner_steps=steps, inner_batch=inner_batch, meta_hidden=4)
    model = model.double()
    random_gates(model)
    episode = small_episode(T=2)
    batches = model.mini_batches(episode, steps, inner_batch)  # [T, steps, B]
    loss, scores = model.meta_loss(episode)
    parameters = dict(model.named_parameters())
    got = dict(zip(parameters, torch.autograd.grad(loss, list(parameters.values()))))
    with torch.no_grad():
        theta = model.adapt(episode, steps, inner_batch)
    expected_loss = 0.0
    for task in range(2):
        expected, forget_gates = paper_meta_learner(model, model.net, episode.support[task],
                                                    episode.support_labels[task], batches[task])
        assert torch.allclose(theta[task], expected.detach(), atol=1e-12, rtol=1e-10)
        learner = torch.func.functional_call(model.net, model.unflatten(expected), (episode.query[task],))
        assert torch.allclose(scores[task], learner.detach(), atol=1e-12, rtol=1e-10)
        expected_loss = expected_loss + nn.functional.cross_entropy(learner, episode.query_labels[task]) / 2
        assert all(f.max() - f.min() > 0.05 for f in forget_gates)  # the gates are not held: they vary
    want = dict(zip(parameters, torch.autograd.grad(expected_loss, list(parameters.values()))))
    assert math.isclose(loss.item(), expected_loss.item(), rel_tol=1e-12)
    for name in parameters:
        assert torch.allclose(got[name], want[name], atol=1e-12, rtol=1e-9), name
    assert all(want[name].abs().max() > 1e-4 for name in ("W_F.weight", "W_I.weight", "lstm.weight_ih"))


def test_meta_learner_parameter_count_does_not_depend_on_the_learner():
    """LSTMCell(4, 20): 4·20·(4 + 20) weights + 2·80 biases; W_F and W_I: 22 + 1 each. Everything else is θ_0."""
    for hidden in (8, 64):
        model = MetaLSTM((1, 28, 28), n_way=5, hidden=hidden)
        meta = sum(p.numel() for p in model.meta_learner_parameters().values())
        theta_0 = sum(p.numel() for p in model.net.parameters())
        assert meta == 4 * 20 * 24 + 2 * 80 + 2 * 23
        assert sum(p.numel() for p in model.parameters()) == meta + theta_0


def test_forget_gate_starts_near_one_and_input_gate_near_zero():
    model = MetaLSTM((1, 28, 28), n_way=5)
    assert torch.sigmoid(model.W_F.bias).item() > 0.98
    assert torch.sigmoid(model.W_I.bias).item() < 0.02


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="inner_steps"):
        MetaLSTM((1, 28, 28), n_way=5, inner_steps=0)


def test_learns_on_the_synthetic_set(trainer):
    """5-way 1-shot on the synthetic images (MAML's learning test): the meta-trained meta-learner and θ_0 beat the
    initial ones, which are about SGD at learning rate 0.01 from a random θ_0, by a wide margin."""
    pl.seed_everything(0)
    data = SyntheticDataModule(n_way=5, k_shot=1, n_query=2, tasks_per_batch=4, noise=0.8, test_episodes=100)
    model = MetaLSTM(data.image_shape, n_way=5, hidden=32, inner_steps=5, lr=3e-3)
    before = trainer(1).test(model, data, verbose=False)[0]["test/acc"]
    trainer(60).fit(model, data)
    after = trainer(1).test(model, data, verbose=False)[0]["test/acc"]
    assert before < 40 and after > 60, (before, after)  # chance is 20%
