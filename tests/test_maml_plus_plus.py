"""MAML++'s settings of MAML (Antoniou et al. 2019): multi-step loss, derivative-order annealing, learned per-layer
per-step inner learning rates, per-step batch-norm weights, cosine annealing of the outer learning rate."""

import math

import pytest
import pytorch_lightning as pl
import torch
from test_maml import (
    classification_episode,
    conv_maml,
    meta_gradient,
    regression_episode,
)
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
    model = conv_maml(meta_batch, per_step_batch_norm=True)
    assert all(norm.weight.shape == norm.bias.shape == (2, 4) for norm in model.norms)
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


def test_per_step_running_statistics_layer_against_nn_batch_norm():
    """A MetaBatchNorm with per-step running statistics: using set 2, it computes what nn.BatchNorm2d computes in
    evaluation mode with set 2 as its running statistics; ``update_running_statistics`` is nn.BatchNorm's momentum
    rule, set by set."""
    torch.manual_seed(0)
    norm = MetaBatchNorm(4).double()
    norm.per_step_statistics(3)
    assert norm.running_mean.shape == norm.running_var.shape == (3, 4)
    statistics = torch.stack([torch.randn(3, 4), torch.rand(3, 4) + 0.5], dim=1).double()  # [S, 2, C]
    norm.update_running_statistics(statistics)
    assert torch.allclose(norm.running_mean, 0.1 * statistics[:, 0])
    assert torch.allclose(norm.running_var, 0.9 + 0.1 * statistics[:, 1])
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    reference = nn.BatchNorm2d(4).double().eval()
    reference.load_state_dict({"weight": norm.weight, "bias": norm.bias, "running_mean": norm.running_mean[2],
                               "running_var": norm.running_var[2], "num_batches_tracked": torch.tensor(1)})
    x = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    norm.step, norm.use_running = 2, True
    assert torch.allclose(norm(x), reference(x), rtol=1e-12)
    assert torch.allclose(norm(x[:1]), reference(x[:1]), rtol=1e-12)  # each example on its own


@pytest.mark.parametrize("meta_batch", ["loop", "vmap"])
def test_per_step_running_statistics_keep_one_set_per_step(meta_batch):
    """One training step with two inner steps: set 0 of every layer's running statistics moves towards the batch
    statistics of the support passes at θ_0, set 1 towards those of the support passes at θ_1 and the query passes
    at θ_2 (the passes using set 1, as for the per-step weights), each averaged over passes and tasks. The inputs of
    every batch-norm layer come from forward hooks on a hand-written adaptation with torch.autograd.grad."""
    model = conv_maml(meta_batch, per_step_batch_norm_statistics=True)
    episode = classification_episode(T=2, N=3, K=2, Q=2, shape=(1, 16, 16))
    model.meta_loss(episode)

    inputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(model.norms))}
    hooks = [norm.register_forward_hook(lambda m, x, y, i=i: inputs[i].append(x[0].detach()))
             for i, norm in enumerate(model.norms)]
    theta = {k: p.detach() for k, p in model.net.named_parameters()}
    for support, labels, query in zip(episode.support, episode.support_labels, episode.query):
        params = {k: p.clone().requires_grad_() for k, p in theta.items()}
        for _ in range(2):
            loss = nn.functional.cross_entropy(functional_call(model.net, params, (support,)), labels)
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {k: (p - 0.3 * g).detach().requires_grad_() for (k, p), g in zip(params.items(), grads)}
        functional_call(model.net, params, (query,))
    for hook in hooks:
        hook.remove()

    def statistics(x: torch.Tensor) -> torch.Tensor:
        dims = [0, 2, 3]
        return torch.stack([x.mean(dims), x.var(dims, unbiased=True)])

    for i, norm in enumerate(model.norms):
        per_task = [inputs[i][3 * t: 3 * t + 3] for t in range(2)]  # support θ_0, support θ_1, query θ_2
        set0 = sum(statistics(passes[0]) for passes in per_task) / 2
        set1 = sum((statistics(passes[1]) + statistics(passes[2])) / 2 for passes in per_task) / 2
        expected = torch.stack([set0, set1])  # [S, 2, C]
        assert torch.allclose(norm.running_mean, 0.1 * expected[:, 0], rtol=1e-9)
        assert torch.allclose(norm.running_var, 0.9 + 0.1 * expected[:, 1], rtol=1e-9)
        assert not torch.allclose(norm.running_mean[0], norm.running_mean[1])


@pytest.mark.parametrize("meta_batch", ["loop", "vmap"])
def test_evaluation_normalises_with_the_running_statistics_of_each_step(meta_batch):
    """Evaluation with per-step running statistics, three steps past two trained sets: step i's support pass uses
    set min(i, 1), the query pass after the last step set 1, each example normalised on its own (a query's scores do
    not depend on the other queries), against a hand-written adaptation that sets each layer's step."""
    model = conv_maml(meta_batch, per_step_batch_norm_statistics=True, eval_inner_steps=3).eval()
    with torch.no_grad():
        for norm in model.norms:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
    episode = classification_episode(T=2, N=3, K=2, Q=2, shape=(1, 16, 16))
    scores = model.predict(episode)

    def using(step: int) -> None:
        for norm in model.norms:
            norm.step, norm.use_running = step, True

    theta = {k: p.detach() for k, p in model.net.named_parameters()}
    expected = []
    for support, labels, query in zip(episode.support, episode.support_labels, episode.query):
        params = {k: p.clone().requires_grad_() for k, p in theta.items()}
        for i in range(3):
            using(min(i, 1))
            loss = nn.functional.cross_entropy(functional_call(model.net, params, (support,)), labels)
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {k: (p - 0.3 * g).detach().requires_grad_() for (k, p), g in zip(params.items(), grads)}
        using(1)
        expected.append(functional_call(model.net, params, (query,)).detach())
    for norm in model.norms:
        norm.step, norm.use_running = 0, False
    assert torch.allclose(scores, torch.stack(expected), rtol=1e-9)
    one_query = episode.__class__(episode.support, episode.support_labels, episode.query[:, :1],
                                  episode.query_labels[:, :1], episode.n_way)
    assert torch.allclose(model.predict(one_query), scores[:, :1], rtol=1e-9)
