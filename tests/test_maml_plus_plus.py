"""MAML++'s settings of MAML (Antoniou et al. 2019): multi-step loss, derivative-order annealing, learned per-layer
per-step inner learning rates, per-step batch-norm weights, cosine annealing of the outer learning rate."""

import math

import pytest
import pytorch_lightning as pl
import torch
from test_maml import classification_episode, conv_maml, meta_gradient, regression_episode
from torch import nn
from torch.func import functional_call

from lightning_meta import MAML, ConfigError, ProtoNet
from lightning_meta.backbones import MetaBatchNorm


def at_epoch(monkeypatch, epoch: int) -> None:
    monkeypatch.setattr(MAML, "current_epoch", property(lambda self: epoch))


def linear_maml(steps: int, **kwargs) -> MAML:
    model = MAML((3,), n_way=0, backbone="mlp", inner_steps=steps, inner_lr=0.05, **kwargs)
    model.net = nn.Sequential(nn.Linear(3, 1, bias=False)).double()
    model.norms = []
    return model


@pytest.mark.parametrize("epoch, weights", [(2, [4 / 15, 4 / 15, 7 / 15]), (9, [1 / 30, 1 / 30, 14 / 15]),
                                            (10, None)])
def test_step_weights_of_the_authors_schedule(epoch, weights, monkeypatch):
    """S = 3 steps annealed over 10 epochs: d = 1/30; at epoch 2 the first two are 1/3 − 2/30 and the last
    1/3 + 2·2/30; at epoch 9, 1/3 − 9/30 (above the floor 0.01) and 1/3 + 18/30; from epoch 10 on, none."""
    at_epoch(monkeypatch, epoch)
    got = linear_maml(3, multi_step_loss_epochs=10).step_weights()
    assert got == pytest.approx(weights, rel=1e-12) if weights else got is None


@pytest.mark.parametrize("meta_batch", ["loop", "vmap"])
def test_multi_step_loss_is_the_weighted_sum_over_the_steps_by_hand(meta_batch, monkeypatch):
    """Linear regression, w_i = M w_{i−1} + α b: the loss Σ_i v_i mean_τ |Z w_i − t|² / Q and its gradient
    Σ_i v_i mean_τ M^i 2 Z'(Z w_i − t) / Q, written out by hand with the weights of epoch 2."""
    at_epoch(monkeypatch, 2)
    T, K, Q, d, alpha, S = 3, 5, 4, 3, 0.05, 3
    model = linear_maml(S, multi_step_loss_epochs=10, meta_batch=meta_batch)
    episode = regression_episode(T, K, Q, d)
    loss, grads = meta_gradient(model, episode)

    v = [4 / 15, 4 / 15, 7 / 15]
    w0 = model.net[0].weight.detach().reshape(d, 1)
    expected_loss, expected_grad = 0.0, torch.zeros(d, 1, dtype=torch.float64)
    for X, y, Z, t in zip(episode.support, episode.support_labels, episode.query, episode.query_labels):
        M = torch.eye(d, dtype=torch.float64) - alpha * 2 * X.T @ X / K
        w = w0
        for i in range(S):
            w = M @ w + alpha * 2 * X.T @ y / K
            expected_loss += v[i] * (Z @ w - t).pow(2).mean() / T
            expected_grad += v[i] * torch.linalg.matrix_power(M, i + 1) @ (2 * Z.T @ (Z @ w - t) / Q) / T
    assert torch.allclose(loss, expected_loss, rtol=1e-10)
    assert torch.allclose(grads["0.weight"], expected_grad.reshape(1, d), rtol=1e-9, atol=1e-12)


def test_derivative_order_annealing_is_first_order_then_second(monkeypatch):
    """With first_order_epochs 2: at epoch 1 the gradient is first-order MAML's, at epoch 2 second-order's."""
    episode = classification_episode(T=2, N=3, K=2, Q=2, shape=(1, 16, 16))
    annealed = conv_maml("vmap")
    annealed.hparams.first_order_epochs = 2
    for epoch, first_order in ((1, True), (2, False)):
        at_epoch(monkeypatch, epoch)
        reference = conv_maml("vmap", first_order=first_order)
        _, expected = meta_gradient(reference, episode)
        _, grads = meta_gradient(annealed, episode)
        for k in expected:
            assert torch.allclose(grads[k], expected[k], rtol=1e-10, atol=1e-13), (epoch, k)


def test_learned_inner_learning_rates_per_step_have_their_closed_form_gradients():
    """Two steps of w_{i+1} = w_i − α_i g(w_i), g(w) = A w − b (A = 2X'X/K, b = 2X'y/K), query gradient h at w_2:
    ∂L/∂α_1 = −⟨g(w_1), h⟩ and ∂L/∂α_0 = −⟨g(w_0), (I − α_1 A) h⟩, averaged over the tasks."""
    T, K, Q, d = 3, 5, 4, 3
    model = linear_maml(2, learn_inner_lr=True)
    model.inner_lrs = nn.ParameterList([torch.tensor([0.03, 0.07], dtype=torch.float64)])
    model.inner_lr_of = {"0.weight": 0}
    episode = regression_episode(T, K, Q, d)
    meta_gradient(model, episode)

    w0 = model.net[0].weight.detach().reshape(d, 1)
    a0, a1 = 0.03, 0.07
    expected = torch.zeros(2, dtype=torch.float64)
    for X, y, Z, t in zip(episode.support, episode.support_labels, episode.query, episode.query_labels):
        A, b = 2 * X.T @ X / K, 2 * X.T @ y / K
        w1 = w0 - a0 * (A @ w0 - b)
        w2 = w1 - a1 * (A @ w1 - b)
        h = 2 * Z.T @ (Z @ w2 - t) / Q
        expected[1] += -((A @ w1 - b) * h).sum() / T
        expected[0] += -((A @ w0 - b) * ((torch.eye(d, dtype=torch.float64) - a1 * A) @ h)).sum() / T
    assert torch.allclose(model.inner_lrs[0].grad, expected, rtol=1e-9, atol=1e-12)


def test_learned_inner_learning_rates_start_at_inner_lr_and_refuse_a_separate_evaluation_rate():
    model = MAML((1, 16, 16), n_way=3, hidden=4, inner_steps=5, inner_lr=0.1, learn_inner_lr=True)
    assert len(model.inner_lrs) == len(model.meta_parameters())
    per_step = MAML((1, 16, 16), n_way=3, hidden=4, inner_steps=5, learn_inner_lr=True, per_step_batch_norm=True)
    assert set(per_step.inner_lr_of) == set(per_step.meta_parameters()) - per_step.outer_only  # none left unused
    assert all(a.shape == (5,) and bool((a == 0.1).all()) for a in model.inner_lrs)
    with pytest.raises(ConfigError, match="remove model.eval_inner_lr"):
        MAML((1, 16, 16), n_way=3, learn_inner_lr=True, eval_inner_lr=0.2)


def test_cosine_annealing_of_the_outer_learning_rate():
    """lr_final + (lr − lr_final)(1 + cos(π t / T)) / 2 at t = 0, T/4, T/2, T and past T."""
    model = ProtoNet((1, 28, 28), lr=1e-3, lr_final=1e-5, lr_anneal="cosine")
    model.trainer = pl.Trainer(max_steps=100, logger=False)
    schedule = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    for t, lr in ((0, 1e-3), (25, 1e-5 + (1e-3 - 1e-5) * (1 + math.sqrt(0.5)) / 2), (50, 5.05e-4), (100, 1e-5),
                  (150, 1e-5)):
        assert schedule.lr_lambdas[0](t) * 1e-3 == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize("meta_batch", ["loop", "vmap"])
def test_per_step_batch_norm_weights_by_hand(meta_batch):
    """Two inner steps with a weight and bias per step in every batch-norm layer, each set different: the query
    outputs and the meta-gradient (every parameter, the per-step sets included) against a hand-written loop with
    torch.autograd.grad, where step i's support pass and the query pass after it use set i and the inner loop leaves
    the batch-norm parameters as they are."""
    torch.manual_seed(0)
    model = MAML((1, 16, 16), n_way=3, backbone="conv4_strided", hidden=4, inner_steps=2, inner_lr=0.3,
                 per_step_batch_norm=True, meta_batch=meta_batch).double()
    with torch.no_grad():
        for norm in model.norms:
            assert norm.weight.shape == norm.bias.shape == (2, 4)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    episode = classification_episode(T=2, N=3, K=2, Q=2, shape=(1, 16, 16))
    model.zero_grad()
    loss, outputs = model.meta_loss(episode)
    loss.backward()

    theta = dict(model.net.named_parameters())
    per_step = {k for k in theta if isinstance(model.net.get_submodule(k.rsplit(".", 1)[0]), MetaBatchNorm)}
    assert per_step and per_step == model.outer_only

    def at_step(params: dict, i: int) -> dict:
        return {k: p[i] if k in per_step else p for k, p in params.items()}

    total, every = 0.0, []
    for support, labels, query, query_labels in zip(episode.support, episode.support_labels, episode.query,
                                                    episode.query_labels):
        params = dict(theta)
        for i in range(2):
            step_loss = nn.functional.cross_entropy(functional_call(model.net, at_step(params, i), (support,)), labels)
            grads = torch.autograd.grad(step_loss, list(params.values()), create_graph=True)
            params = {k: p if k in per_step else p - 0.3 * g for (k, p), g in zip(params.items(), grads)}
        out = functional_call(model.net, at_step(params, 1), (query,))
        total = total + nn.functional.cross_entropy(out, query_labels) / 2
        every.append(out.detach())
    expected = dict(zip(theta, torch.autograd.grad(total, list(theta.values()))))
    assert torch.allclose(outputs, torch.stack(every), rtol=1e-10)
    assert any(expected[k][0].abs().sum() > 0 and expected[k][1].abs().sum() > 0 for k in per_step)  # both sets
    for k, p in model.net.named_parameters():
        assert torch.allclose(p.grad, expected[k], rtol=1e-9, atol=1e-12), k
