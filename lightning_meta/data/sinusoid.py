"""Few-shot sinusoid regression (Finn, Abbeel & Levine 2017, section 5.1).

A task is a sine wave y = A sin(x - φ), A ~ U[0.1, 5], φ ~ U[0, π]; its K support points and Q query points
have x ~ U[-5, 5]. A learner sees the K points and is scored by its mean squared error on the queries.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.errors import DataError
from lightning_meta.episode import Episode, episode_seed


class SinusoidTasks(Dataset[Episode]):
    """Sinusoid tasks indexed by number; task ``i`` of a split is a pure function of ``(seed, split, i)``."""

    def __init__(
        self,
        split: str,
        k_shot: int,
        n_query: int,
        seed: int = 0,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        if k_shot < 1 or n_query < 1:
            raise DataError(f"{split}: sinusoid tasks need k_shot >= 1 and n_query >= 1 (got {k_shot}, {n_query})")
        for name, (low, high) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not low <= high:
                raise DataError(f"data.{name} must be [low, high] with low <= high (got [{low}, {high}])")
        self.split, self.k_shot, self.n_query, self.seed = split, k_shot, n_query, seed
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range

    def __getitem__(self, index: int) -> Episode:
        key = episode_seed(self.seed, self.split, index)
        g = torch.Generator().manual_seed(key)

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return low + (high - low) * torch.rand(shape, generator=g)

        A, phi = uniform(*self.amplitude), uniform(*self.phase)
        x = uniform(*self.x_range, self.k_shot + self.n_query, 1)  # [K+Q, 1]
        y = A * torch.sin(x - phi)
        K = self.k_shot
        return Episode(support=x[None, :K], support_labels=y[None, :K], query=x[None, K:], query_labels=y[None, K:],
                       n_way=0, keys=torch.tensor([key]))


class SinusoidDataModule(EpisodicDataModule):
    """Sinusoid regression episodes: ``k_shot`` points to adapt on, ``n_query`` to score, ``tasks_per_batch``
    tasks per training step (the paper: K = 10, meta-batch 25). Validation and test tasks are fixed by
    ``eval_seed``; they are scored on ``eval_n_query`` points (default 100) for a precise mean squared error.
    """

    task = "regression"

    def __init__(
        self,
        k_shot: int = 10,
        n_query: int = 10,
        tasks_per_batch: int = 25,
        eval_k_shot: int | None = None,
        eval_n_query: int = 100,
        eval_tasks_per_batch: int = 100,
        batches_per_epoch: int = 1000,
        val_episodes: int = 100,
        test_episodes: int = 1000,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        seed: int = 0,
        eval_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(n_way=0, k_shot=k_shot, n_query=n_query, tasks_per_batch=tasks_per_batch,
                         eval_k_shot=eval_k_shot, eval_n_query=eval_n_query, eval_tasks_per_batch=eval_tasks_per_batch,
                         batches_per_epoch=batches_per_epoch, val_episodes=val_episodes, test_episodes=test_episodes,
                         seed=seed, eval_seed=eval_seed, num_workers=num_workers)
        self.ranges = {"amplitude": tuple(amplitude), "phase": tuple(phase), "x_range": tuple(x_range)}

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (1,)

    @property
    def name(self) -> str:
        return "sinusoid"

    def describe(self, subset: str = "test") -> str:
        _, k, q = self.shapes[subset]
        return f"sinusoid, K={k}, {q} query points, {self.num_episodes[subset]} tasks"

    def build_sampler(self, subset: str) -> SinusoidTasks:
        _, k, q = self.shapes[subset]
        return SinusoidTasks(subset, k, q, seed=self.seed if subset == "train" else self.eval_seed, **self.ranges)
