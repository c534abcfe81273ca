import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_meta import Episode, Reptile, SinusoidDataModule, SyntheticDataModule
from lightning_meta.episode import collate_episodes


def fit_on(model: Reptile, *episodes: Episode) -> None:
    """One outer step per episode."""
    pl.Trainer(max_steps=len(episodes), inference_mode=False, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
               ).fit(model, DataLoader(list(episodes), batch_size=None))


@pytest.mark.parametrize("inner_optimizer, backbone, shape, alpha", [
    ("sgd", "conv4_strided", (1, 16, 16), 0.1),  # batch norm included
    ("adam", "mlp", (8,), 0.01),  # no conv bias before batch norm: its 0 gradient is rounding, which Adam scales up
])  # fmt: skip
def test_one_outer_step_moves_theta_by_epsilon_times_the_mean_of_w_minus_theta(inner_optimizer, backbone, shape, alpha):
    """Three tasks; each W_tau computed independently by torch.optim.SGD, or torch.optim.Adam with the paper's
    beta1 = 0, on a copy of the network."""
    torch.manual_seed(0)
    T, N, K, epsilon, k = 3, 3, 2, 0.7, 4
    model = Reptile(shape, n_way=N, backbone=backbone, hidden=4, inner_optimizer=inner_optimizer, inner_lr=alpha,
                    inner_steps=k, inner_batch=N * K, lr=epsilon, lr_final=None)
    episode = Episode(torch.randn(T, N * K, *shape), torch.arange(N).repeat_interleave(K).expand(T, -1),
                      torch.randn(T, N, *shape), torch.arange(N).expand(T, -1), N)
    theta = {k: p.detach().clone() for k, p in model.net.named_parameters()}
    adapted = []
    for support, labels in zip(episode.support, episode.support_labels):
        net = copy.deepcopy(model.net)
        if inner_optimizer == "sgd":
            optimizer = torch.optim.SGD(net.parameters(), lr=alpha)
        else:
            optimizer = torch.optim.Adam(net.parameters(), lr=alpha, betas=(0.0, 0.999))
        for _ in range(k):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(support), labels).backward()
            optimizer.step()
        adapted.append(dict(net.named_parameters()))
    fit_on(model, episode)
    moved = 0.0
    for name, p in model.net.named_parameters():
        mean_move = torch.stack([W[name].detach() - theta[name] for W in adapted]).mean(0)
        assert torch.allclose(p.detach(), theta[name] + epsilon * mean_move, atol=1e-6, rtol=1e-5), name
        moved += mean_move.abs().sum().item()
    assert moved > 0.1


def test_a_task_is_adapted_the_same_in_any_batch():
    """Mini-batches of 2 from 6 support examples are drawn from each task's key: a task's predictions are the same
    alone, first or second in a batch; another key gives other mini-batches, hence other predictions."""
    torch.manual_seed(0)
    N, K, shape = 3, 2, (8,)
    model = Reptile(shape, n_way=N, backbone="mlp", hidden=4, inner_optimizer="sgd", inner_lr=0.5,
                    eval_inner_steps=3, eval_inner_batch=2)

    def task(key: int) -> Episode:
        g = torch.Generator().manual_seed(key)
        return Episode(torch.randn(1, N * K, *shape, generator=g), torch.arange(N).repeat_interleave(K)[None],
                       torch.randn(1, N, *shape, generator=g), torch.arange(N)[None], N, keys=torch.tensor([key]))

    a, b = task(11), task(12)
    alone = model.predict(a)[0]
    assert torch.allclose(model.predict(collate_episodes([a, b]))[0], alone, atol=1e-6)
    assert torch.allclose(model.predict(collate_episodes([b, a]))[1], alone, atol=1e-6)
    rekeyed = Episode(a.support, a.support_labels, a.query, a.query_labels, N, keys=torch.tensor([13]))
    assert not torch.allclose(model.predict(rekeyed)[0], alone, atol=1e-6)


def test_adam_moment_carries_over_from_step_to_step_as_the_mean_over_tasks():
    """Two outer steps with inner Adam (beta1 = 0). In the second, each task's torch.optim.Adam starts from the
    mean of the second moments (exp_avg_sq) that the first step's tasks ended with, and from their step count."""
    torch.manual_seed(0)
    T, N, K, epsilon, k, alpha, shape = 3, 3, 2, 0.7, 4, 0.01, (8,)
    model = Reptile(shape, n_way=N, backbone="mlp", hidden=4, inner_lr=alpha, inner_steps=k, inner_batch=N * K,
                    lr=epsilon, lr_final=None)
    labels = torch.arange(N).repeat_interleave(K).expand(T, -1)
    episodes = [Episode(torch.randn(T, N * K, *shape), labels, torch.randn(T, N, *shape),
                        torch.arange(N).expand(T, -1), N) for _ in range(2)]
    net, moment = copy.deepcopy(model.net), None
    for episode in episodes:
        theta = {name: p.detach().clone() for name, p in net.named_parameters()}
        moves, moments = [], []
        for support, task_labels in zip(episode.support, episode.support_labels):
            task_net = copy.deepcopy(net)
            optimizer = torch.optim.Adam(task_net.parameters(), lr=alpha, betas=(0.0, 0.999))
            if moment is not None:
                for name, p in task_net.named_parameters():
                    optimizer.state[p] = {"step": torch.tensor(float(k)), "exp_avg": torch.zeros_like(p),
                                          "exp_avg_sq": moment[name].clone()}
            for _ in range(k):
                optimizer.zero_grad()
                nn.functional.cross_entropy(task_net(support), task_labels).backward()
                optimizer.step()
            moves.append({name: p.detach() - theta[name] for name, p in task_net.named_parameters()})
            moments.append({name: optimizer.state[p]["exp_avg_sq"] for name, p in task_net.named_parameters()})
        with torch.no_grad():
            for name, p in net.named_parameters():
                p += epsilon * torch.stack([move[name] for move in moves]).mean(0)
        moment = {name: torch.stack([m[name] for m in moments]).mean(0) for name in theta}
    fit_on(model, *episodes)
    expected = dict(net.named_parameters())
    for name, p in model.net.named_parameters():
        assert torch.allclose(p.detach(), expected[name].detach(), atol=1e-6, rtol=1e-5), name
    assert torch.allclose(model.inner_v, torch.cat([moment[name].flatten() for name in expected]), rtol=1e-4,
                          atol=1e-12)
    assert model.inner_t.item() == 2 * k


def test_epsilon_anneals_linearly_to_lr_final():
    model = Reptile((1, 16, 16), n_way=3, backbone="conv4_strided", hidden=4, lr=1.0, lr_final=0.2)
    episode = Episode(torch.randn(1, 3, 1, 16, 16), torch.arange(3)[None], torch.randn(1, 3, 1, 16, 16),
                      torch.arange(3)[None], 3)
    seen = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    pl.Trainer(max_steps=4, inference_mode=False, logger=False, enable_checkpointing=False, callbacks=[Record()],
               enable_progress_bar=False, enable_model_summary=False).fit(model, DataLoader([episode] * 4,
                                                                                             batch_size=None))
    assert seen == pytest.approx([1.0, 0.8, 0.6, 0.4])


def test_learns_synthetic_episodes(trainer):
    """5-way 1-shot on 32-d vectors: fine-tuning from the meta-learned θ beats fine-tuning from the initial one."""
    pl.seed_everything(0)
    data = SyntheticDataModule(shape=(32,), n_way=5, k_shot=4, n_query=1, tasks_per_batch=5, noise=0.3,
                               eval_k_shot=1, test_episodes=50)
    model = Reptile(data.image_shape, n_way=5, backbone="mlp", hidden=32, inner_lr=1e-2, eval_inner_steps=10)
    before = trainer(1).test(model, data, verbose=False)[0]["test/acc"]
    trainer(100).fit(model, data)
    after = trainer(1).test(model, data, verbose=False)[0]["test/acc"]
    assert after > 70 and after > before + 5, (before, after)  # chance is 20%


def test_sinusoid_mse_falls(trainer):
    pl.seed_everything(0)
    data = SinusoidDataModule(k_shot=50, tasks_per_batch=5, eval_k_shot=10, test_episodes=100)
    model = Reptile(data.image_shape, n_way=0, backbone="mlp", hidden=40, inner_optimizer="sgd", inner_lr=0.02,
                    inner_steps=5, inner_batch=10, eval_inner_steps=10)
    before = trainer(1).test(model, data, verbose=False)[0]["test/mse"]
    trainer(400).fit(model, data)
    after = trainer(1).test(model, data, verbose=False)[0]["test/mse"]
    assert after < 0.5 * before, (before, after)
