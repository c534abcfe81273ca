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
