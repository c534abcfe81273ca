import math

import pytest
import pytorch_lightning as pl
import torch
from test_maml import assert_matches_finite_differences, classification_episode

from lightning_meta import R2D2, ConfigError, SyntheticDataModule
from lightning_meta.algorithms.r2d2 import ridge_regression


def primal_by_lstsq(X: torch.Tensor, Y: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin ‖XW − Y‖² + λ‖W‖² as the least-squares solution of [X; √λ I] W = [Y; 0], one task at a time."""
    d = X.shape[-1]
    solutions = []
    for x, y in zip(X, Y):
        A = torch.cat([x, math.sqrt(lam) * torch.eye(d, dtype=x.dtype)])
        B = torch.cat([y, torch.zeros(d, y.shape[1], dtype=y.dtype)])
        solutions.append(torch.linalg.lstsq(A, B).solution)
    return torch.stack(solutions)


@pytest.mark.parametrize("n, d", [(5, 12), (25, 12)])  # Woodbury (n <= d), primal (n > d)
def test_ridge_regression_is_the_least_squares_solution_of_the_primal_problem(n, d):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, n, d, generator=g, dtype=torch.float64)
    Y = torch.nn.functional.one_hot(torch.arange(n) % 5, 5).double().expand(3, n, 5)
    W = ridge_regression(X, Y, torch.tensor(0.7, dtype=torch.float64))
    assert torch.allclose(W, primal_by_lstsq(X, Y, 0.7), rtol=1e-10, atol=1e-12)


def tiny_r2d2(seed: int = 0, **kwargs) -> R2D2:
    torch.manual_seed(seed)
    return R2D2((1, 16, 16), backbone="conv4", hidden=4, lam=0.5, scale=3.0, **kwargs).double()


def test_query_scores_are_the_ridge_regression_of_the_support_embeddings():
    """α [z_q, 1] W + β, W from lstsq on the primal problem over the model's own embeddings with a bias column."""
    model = tiny_r2d2()
    with torch.no_grad():
        model.beta.fill_(0.25)
    episode = classification_episode(T=2, N=3, K=2, Q=2, shape=(1, 16, 16))
    with torch.no_grad():
        scores = model.predict(episode)
        z_support, z_query = model.embed(episode)
    ones = torch.ones(2, z_support.shape[1], 1, dtype=torch.float64)
    X = torch.cat([z_support.flatten(2), ones], -1)
    Y = torch.nn.functional.one_hot(episode.support_labels, 3).double()
    W = primal_by_lstsq(X, Y, model.log_lam.exp().item())  # 0.5, up to float32's rounding of log 0.5
    expected = 3.0 * torch.cat([z_query.flatten(2), torch.ones(2, z_query.shape[1], 1, dtype=torch.float64)], -1) @ W
    assert torch.allclose(scores, expected + 0.25, rtol=1e-9, atol=1e-12)


def test_gradient_through_the_solve_matches_finite_differences():
    """The query loss's gradient in the backbone's weights, log λ, α and β, float64, against central differences
    along random directions (batch norm on the batch's statistics, as in training)."""
    model = tiny_r2d2()
    episode = classification_episode(T=2, N=3, K=2, Q=3, shape=(1, 16, 16))
    variables = [p for p in model.parameters() if p.requires_grad]
    assert any(p is model.log_lam for p in variables)
    model.zero_grad()
    model.meta_loss(episode)[0].backward()
    grads = [v.grad.clone() for v in variables]
    assert next(model.f_theta.parameters()).grad.abs().sum() > 0  # the gradient reaches f_θ through the solve

    def objective() -> float:
        with torch.no_grad():
            return model.meta_loss(episode)[0].item()

    assert_matches_finite_differences(objective, variables, grads)


def test_lambda_stays_fixed_unless_learned_and_bad_settings_are_refused():
    fixed = tiny_r2d2(learn_lam=False)
    assert not fixed.log_lam.requires_grad and math.isclose(fixed.log_lam.exp().item(), 0.5, rel_tol=1e-6)
    with pytest.raises(ConfigError, match="model.lam and model.scale must be positive"):
        R2D2((1, 16, 16), lam=0.0)


def test_learns_synthetic_episodes(trainer):
    pl.seed_everything(0)
    data = SyntheticDataModule(n_way=5, k_shot=1, n_query=2, tasks_per_batch=4, noise=0.8, test_episodes=100)
    model = R2D2(data.image_shape, hidden=32)
    before = trainer(1).test(model, data, verbose=False)[0]["test/acc"]
    trainer(60).fit(model, data)
    after = trainer(1).test(model, data, verbose=False)[0]["test/acc"]
    assert before < 40 and after > 60, (before, after)  # chance is 20%
