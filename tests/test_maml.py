import copy
from collections.abc import Callable

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_meta import (
    MAML,
    ConfigError,
    Episode,
    SinusoidDataModule,
    SyntheticDataModule,
)
from lightning_meta.backbones import BACKBONES


def regression_episode(T: int, K: int, Q: int, d: int, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, K + Q, d, generator=g, dtype=torch.float64)
    y = torch.randn(T, K + Q, 1, generator=g, dtype=torch.float64)
    return Episode(x[:, :K], y[:, :K], x[:, K:], y[:, K:], n_way=0)


def classification_episode(T: int, N: int, K: int, Q: int, shape: tuple[int, ...], seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N)
    return Episode(
        support=torch.randn(T, N * K, *shape, generator=g, dtype=torch.float64),
        support_labels=labels.repeat_interleave(K).expand(T, -1).contiguous(),
        query=torch.randn(T, N * Q, *shape, generator=g, dtype=torch.float64),
        query_labels=labels.repeat(Q).expand(T, -1).contiguous(),  # query classes interleaved on purpose
        n_way=N,
    )


def meta_gradient(model: MAML, episode: Episode) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss, _ = model.meta_loss(episode)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.net.named_parameters()}


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("meta_batch", ["loop", "vmap"])
def test_linear_regression_meta_gradient_in_closed_form(steps, meta_batch):
    """f_w(x) = w.x with L(w) = |Xw - y|^2 / n, so one inner step is the affine map
    w' = M w + a b, with M = I - a A, A = 2 X'X / n, b = 2 X'y / n, and the MAML gradient of the query loss
    through s steps is (M')^s grad L_q(w^(s)) = M^s (2 Z'(Z w^(s) - t) / m)."""
    T, K, Q, d, alpha = 3, 5, 4, 3, 0.05
    model = MAML((d,), n_way=0, backbone="mlp", inner_steps=steps, inner_lr=alpha, meta_batch=meta_batch)
    model.net = nn.Sequential(nn.Linear(d, 1, bias=False)).double()
    model.norms = []
    episode = regression_episode(T, K, Q, d)
    loss, grads = meta_gradient(model, episode)

    w0 = model.net[0].weight.detach().reshape(d, 1)
    expected_loss, expected_grad = 0.0, torch.zeros(d, 1, dtype=torch.float64)
    for X, y, Z, t in zip(episode.support, episode.support_labels, episode.query, episode.query_labels):
        M = torch.eye(d, dtype=torch.float64) - alpha * 2 * X.T @ X / K
        b = 2 * X.T @ y / K
        w = w0
        for _ in range(steps):
            w = M @ w + alpha * b
        expected_loss += (Z @ w - t).pow(2).mean() / T
        expected_grad += torch.linalg.matrix_power(M, steps) @ (2 * Z.T @ (Z @ w - t) / Q) / T
    assert torch.allclose(loss, expected_loss, rtol=1e-10)
    assert torch.allclose(grads["0.weight"], expected_grad.reshape(1, d), rtol=1e-9, atol=1e-12)


def conv_maml(meta_batch: str, seed: int = 0, learner: type[MAML] = MAML, **kwargs) -> MAML:
    """A small float64 conv net with batch norm, two inner steps of 0.3, of ``learner`` (MAML or a subclass)."""
    torch.manual_seed(seed)
    model = learner((1, 16, 16), n_way=3, backbone="conv4_strided", hidden=4, inner_steps=2, inner_lr=0.3,
                    meta_batch=meta_batch, **kwargs).double()
    with torch.no_grad():  # non-trivial batch-norm affine parameters
        for norm in model.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return model


def assert_matches_finite_differences(objective: Callable[[], float], variables: list[torch.Tensor],
                                      grads: list[torch.Tensor], eps: float = 1e-6) -> None:
    """The gradients ``grads`` of ``objective`` in ``variables`` (float64) against central differences along three
    random directions, the variables moved in place and put back."""
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        directions = [torch.randn(v.shape, generator=g, dtype=torch.float64) for v in variables]
        values = []
        for sign in (1, -2, 1):  # to θ + εu, to θ − εu, back to θ
            with torch.no_grad():
                for v, u in zip(variables, directions):
                    v += sign * eps * u
            values.append(objective())
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = sum((grad * u).sum() for grad, u in zip(grads, directions)).item()
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (numeric, analytic)


@pytest.mark.parametrize("meta_batch", ["loop", "vmap"])
def test_second_order_meta_gradient_matches_finite_differences(meta_batch):
    """A conv net with (affine) batch norm, two inner steps, float64: the gradient of the meta-objective
    against central differences along random directions."""
    model = conv_maml(meta_batch)
    episode = classification_episode(T=2, N=3, K=2, Q=2, shape=(1, 16, 16))
    _, grads = meta_gradient(model, episode)

    def objective() -> float:
        with torch.no_grad():
            outputs = model.run_tasks(model.meta_parameters(), episode, 2, 0.3, first_order=False)
        return model.loss(outputs.flatten(0, 1), episode.query_labels.flatten()).item()

    assert_matches_finite_differences(objective, list(model.net.parameters()), list(grads.values()))


@pytest.mark.parametrize("meta_batch", ["loop", "vmap"])
def test_first_order_gradient_is_the_query_gradient_at_the_adapted_parameters(meta_batch):
    """Adapted parameters computed independently with torch.autograd.grad on a copy of the network."""
    model = conv_maml(meta_batch, first_order=True)
    episode = classification_episode(T=2, N=3, K=2, Q=2, shape=(1, 16, 16))
    _, grads = meta_gradient(model, episode)

    expected = {k: torch.zeros_like(p) for k, p in model.net.named_parameters()}
    for support, labels, query, query_labels in zip(episode.support, episode.support_labels, episode.query,
                                                    episode.query_labels):
        net = copy.deepcopy(model.net)
        for _ in range(2):
            loss = nn.functional.cross_entropy(net(support), labels)
            step = torch.autograd.grad(loss, list(net.parameters()))
            with torch.no_grad():
                for p, g in zip(net.parameters(), step):
                    p -= 0.3 * g
        query_loss = nn.functional.cross_entropy(net(query), query_labels)
        for (k, _), g in zip(net.named_parameters(), torch.autograd.grad(query_loss, list(net.parameters()))):
            expected[k] += g / 2
    for k in expected:
        assert torch.allclose(grads[k], expected[k], rtol=1e-9, atol=1e-12), k


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_and_loop_give_the_same_losses_gradients_and_predictions(first_order):
    loop, vmap = conv_maml("loop", first_order), conv_maml("vmap", first_order)
    episode = classification_episode(T=3, N=3, K=2, Q=3, shape=(1, 16, 16), seed=5)
    loss_loop, grads_loop = meta_gradient(loop, episode)
    loss_vmap, grads_vmap = meta_gradient(vmap, episode)
    assert torch.allclose(loss_loop, loss_vmap, rtol=1e-12)
    for k in grads_loop:
        assert torch.allclose(grads_loop[k], grads_vmap[k], rtol=1e-9, atol=1e-13), k
    assert torch.allclose(loop.predict(episode), vmap.predict(episode), rtol=1e-12)


def test_support_statistics_make_each_query_independent():
    """With batch_norm: support, a query's scores do not depend on the other queries; transductive ones do."""
    episode = classification_episode(T=1, N=3, K=2, Q=2, shape=(1, 16, 16))
    alone = copy.deepcopy(episode)
    alone.query, alone.query_labels = episode.query[:, :1], episode.query_labels[:, :1]
    model = conv_maml("vmap")
    model.hparams.batch_norm = "support"
    assert torch.allclose(model.predict(episode)[:, :1], model.predict(alone), rtol=1e-10)
    model.hparams.batch_norm = "transductive"
    assert not torch.allclose(model.predict(episode)[:, :1], model.predict(alone), rtol=1e-3)


@pytest.mark.parametrize("norm, dims", [(nn.LayerNorm(8), 0), (nn.GroupNorm(2, 8), 0), (nn.SyncBatchNorm(8), 0),
                                        (nn.InstanceNorm2d(4, affine=True), 2), (nn.BatchNorm3d(8), 3)])
def test_vmap_refuses_norms_with_wrong_batched_second_derivatives(norm, dims):
    """Every normalisation layer that MetaBatchNorm does not replace (it replaces BatchNorm1d and 2d), on 8 features
    as ``dims`` + 1 dimensions (InstanceNorm2d: 4 channels of 2 x 1 positions)."""
    unflatten = nn.Unflatten(1, {0: (8,), 2: (4, 2, 1), 3: (8, 1, 1, 1)}[dims])
    BACKBONES["normed_net"] = lambda shape, hidden: nn.Sequential(nn.Flatten(), nn.Linear(4, 8), unflatten, norm,
                                                                  nn.Flatten())
    try:
        with pytest.raises(ConfigError, match=f"{type(norm).__name__} .* set model.meta_batch: loop"):
            MAML((4,), n_way=3, backbone="normed_net", meta_batch="vmap")
        MAML((4,), n_way=3, backbone="normed_net", meta_batch="loop")
    finally:
        del BACKBONES["normed_net"]


def test_refuses_inference_mode_and_a_wrong_number_of_ways(trainer):
    data = SyntheticDataModule(n_way=5, k_shot=1, n_query=3, test_episodes=20)
    with pytest.raises(ConfigError, match="inference_mode: false"):
        pl.Trainer(logger=False, enable_progress_bar=False).test(MAML(data.image_shape, n_way=5), data)
    with pytest.raises(ConfigError, match="model.n_way is 4 but the data gives 5-way"):
        trainer(1).test(MAML(data.image_shape, n_way=4), data)


@pytest.mark.parametrize("first_order", [False, True])
def test_learns_synthetic_episodes(first_order, trainer):
    pl.seed_everything(0)
    data = SyntheticDataModule(n_way=5, k_shot=1, n_query=2, tasks_per_batch=4, noise=0.8, test_episodes=100)
    model = MAML(data.image_shape, n_way=5, hidden=32, first_order=first_order)
    before = trainer(1).test(model, data, verbose=False)[0]["test/acc"]
    trainer(60).fit(model, data)
    after = trainer(1).test(model, data, verbose=False)[0]["test/acc"]
    assert before < 40 and after > 60, (before, after)  # chance is 20%


@pytest.mark.parametrize("first_order", [False, True])
def test_sinusoid_mse_falls(first_order, trainer):
    pl.seed_everything(0)
    data = SinusoidDataModule(test_episodes=100)
    model = MAML(data.image_shape, n_way=0, backbone="mlp", hidden=40, inner_lr=0.01, eval_inner_steps=10,
                 first_order=first_order)
    before = trainer(1).test(model, data, verbose=False)[0]["test/mse"]
    trainer(1000).fit(model, data)
    after = trainer(1).test(model, data, verbose=False)[0]["test/mse"]
    assert after < 0.3 * before, (before, after)

