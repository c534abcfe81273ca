import math

import torch

from lightning_meta import SinusoidDataModule
from lightning_meta.data import SinusoidTasks


def test_every_task_is_a_sine_wave_in_the_paper_ranges():
    """Fit y = a sin x + b cos x by least squares (A sin(x - φ) = A cos φ sin x - A sin φ cos x): the fit is
    exact and A = |(a, b)|, φ = atan2(-b, a) fall in [0.1, 5] and [0, π]."""
    tasks = SinusoidTasks("train", k_shot=10, n_query=5)
    for i in range(50):
        e = tasks[i]
        x = torch.cat([e.support, e.query], 1)[0, :, 0].double()
        y = torch.cat([e.support_labels, e.query_labels], 1)[0, :, 0].double()
        assert e.support.shape == (1, 10, 1) and e.query.shape == (1, 5, 1) and e.n_way == 0
        assert x.min() >= -5 and x.max() <= 5
        basis = torch.stack([x.sin(), x.cos()], 1)
        a, b = torch.linalg.lstsq(basis, y[:, None]).solution[:, 0]
        assert torch.allclose(basis @ torch.stack([a, b]), y, atol=1e-5)
        amplitude, phase = math.hypot(a, b), math.atan2(-b, a)
        assert 0.1 - 1e-5 <= amplitude <= 5 + 1e-5 and -1e-5 <= phase <= math.pi + 1e-5


def test_evaluation_tasks_are_fixed_and_training_tasks_follow_the_seed():
    def first_batch(data, subset):
        data.setup("fit" if subset == "train" else "test")
        return next(iter(data.train_dataloader() if subset == "train" else data.test_dataloader()))

    a, b = SinusoidDataModule(seed=0), SinusoidDataModule(seed=1)
    assert torch.equal(first_batch(a, "test").query, first_batch(b, "test").query)
    assert not torch.equal(first_batch(a, "train").support, first_batch(b, "train").support)
    test = first_batch(a, "test")
    assert test.support.shape == (100, 10, 1) and test.query_labels.shape == (100, 100, 1)
