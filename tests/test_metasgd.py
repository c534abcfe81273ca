import pytest
import pytorch_lightning as pl
import torch
from test_maml import (
    assert_matches_finite_differences,
    classification_episode,
    conv_maml,
    regression_episode,
)
from torch import nn

from lightning_meta import ConfigError, MetaSGD, SyntheticDataModule


@pytest.mark.parametrize("meta_batch", ["loop", "vmap"])
def test_linear_regression_gradients_in_closed_form(meta_batch):
    """f_w(x) = w.x, L(w) = |Xw - y|^2 / n. One step w' = w - α∘g with g = 2 X'(Xw - y) / K; with
    h = 2 Z'(Zw' - t) / Q the query gradient at w', ∂L_q/∂α = -g∘h and ∂L_q/∂w = (I - A diag(α)) h, A = 2 X'X / K."""
    T, K, Q, d = 3, 5, 4, 3
    model = MetaSGD((d,), n_way=0, backbone="mlp", inner_lr=0.05, meta_batch=meta_batch)
    model.net = nn.Sequential(nn.Linear(d, 1, bias=False)).double()
    model.norms = []
    model.alpha = nn.ParameterList([torch.tensor([[0.02, 0.05, 0.11]], dtype=torch.float64)])
    model.alpha_of = {"0.weight": 0}
    episode = regression_episode(T, K, Q, d)
    model.zero_grad()
    model.meta_loss(episode)[0].backward()

    w, alpha = model.net[0].weight.detach().reshape(d, 1), model.alpha[0].detach().reshape(d, 1)
    grad_w, grad_alpha = torch.zeros(d, 1, dtype=torch.float64), torch.zeros(d, 1, dtype=torch.float64)
    for X, y, Z, t in zip(episode.support, episode.support_labels, episode.query, episode.query_labels):
        g = 2 * X.T @ (X @ w - y) / K
        h = 2 * Z.T @ (Z @ (w - alpha * g) - t) / Q
        grad_alpha += -g * h / T
        grad_w += (h - 2 * X.T @ X / K @ (alpha * h)) / T
    assert torch.allclose(model.alpha[0].grad, grad_alpha.reshape(1, d), rtol=1e-9, atol=1e-12)
    assert torch.allclose(model.net[0].weight.grad, grad_w.reshape(1, d), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("meta_batch", ["loop", "vmap"])
def test_gradients_in_theta_and_alpha_match_finite_differences(meta_batch):
    """A conv net with affine batch norm, two inner steps, float64, α perturbed away from its constant start: the
    gradient of the meta-objective in (θ, α) against central differences along random directions."""
    model = conv_maml(meta_batch, learner=MetaSGD)
    with torch.no_grad():
        for a in model.alpha:
            a.uniform_(0.1, 0.5)
    episode = classification_episode(T=2, N=3, K=2, Q=2, shape=(1, 16, 16))
    model.zero_grad()
    model.meta_loss(episode)[0].backward()
    variables = [*model.net.parameters(), *model.alpha]
    grads = [v.grad.clone() for v in variables]

    def objective() -> float:
        with torch.no_grad():
            return model.meta_loss(episode)[0].item()

    assert_matches_finite_differences(objective, variables, grads)


def test_alpha_has_theta_shapes_starts_at_the_inner_lr_and_is_meta_learned():
    model = MetaSGD((1, 16, 16), n_way=3, backbone="conv4_strided", hidden=4, inner_lr=0.25)
    theta = model.meta_parameters()
    assert [a.shape for a in model.alpha] == [p.shape for p in theta.values()]
    assert all(bool((a == 0.25).all()) for a in model.alpha)
    optimised = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    assert all(id(a) in optimised for a in model.alpha)
    with pytest.raises(ConfigError, match="learns a step size per coordinate"):
        MetaSGD((1, 16, 16), n_way=3, eval_inner_lr=0.1)


def test_learns_synthetic_episodes(trainer):
    pl.seed_everything(0)
    data = SyntheticDataModule(n_way=5, k_shot=1, n_query=2, tasks_per_batch=4, noise=0.8, test_episodes=100)
    model = MetaSGD(data.image_shape, n_way=5, hidden=32)
    before = trainer(1).test(model, data, verbose=False)[0]["test/acc"]
    trainer(60).fit(model, data)
    after = trainer(1).test(model, data, verbose=False)[0]["test/acc"]
    assert before < 40 and after > 60, (before, after)  # chance is 20%
