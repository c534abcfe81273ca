"""Callbacks that time training steps and test episodes, for benchmarks that run train.py (in-process, or as a
subprocess: they also print their rates)."""

from __future__ import annotations

import functools
import statistics
import time

import pytorch_lightning as pl
import torch
from torch import nn

RATES: list[float] = []  # training steps per second of each timed fit, in order
TEST_SECONDS: list[float] = []  # seconds of each timed test (TestTimer), in order


class StepTimer(pl.Callback):
    """Times the training steps after the first ``warmup`` ones, leaving out the time spent validating, and
    appends steps per second to ``RATES`` (nothing if training ends within the warm-up)."""

    def __init__(self, warmup: int = 20) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.validating_since: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validating_since = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start is not None and not trainer.sanity_checking:
            self.start += time.perf_counter() - self.validating_since  # the clock stands still while validating

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start is None:
            return
        RATES.append((trainer.global_step - self.warmup) / (time.perf_counter() - self.start))
        if trainer.is_global_zero:
            print(f"timed: {RATES[-1]:.6f} training steps per second", flush=True)


@functools.cache
def speed_probe(steps: int = 20, warmup: int = 5) -> float:
    """Milliseconds per step of a fixed workload on the CPU with this process's threads, measured once per process:
    forward and backward through four blocks of 3x3 convolution (64 filters), batch norm, ReLU and 2x2 max-pooling
    (the conv4 of the few-shot papers, written out here so that the probe stays the same whatever the library's
    networks become) on 100 random 28 x 28 images, an Omniglot training step's size; the median of ``steps``
    steps after ``warmup``. Two machines with one CPU label have trained the same configs at step counts a third
    apart here; the probe in every record (``machine.probe_ms``) tells such machines apart."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        blocks = [[nn.Conv2d(c, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)]
                  for c in (1, 64, 64, 64)]
        net = nn.Sequential(*(layer for block in blocks for layer in block))
        images = torch.rand(100, 1, 28, 28)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        net(images).square().mean().backward()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


class TrainingClock(pl.Callback):
    """Keeps training time and validation time apart, and stops training once the training time (validation left
    out) reaches ``budget`` minutes, as Lightning's ``max_time`` does with the two together. Prints both at the end
    of training (``timed: 9.98 training minutes``, ``timed: 1.20 validation minutes``)."""

    def __init__(self, budget: float | None = None) -> None:
        self.budget = budget
        self.training = self.validation = 0.0  # seconds
        self.since = 0.0  # the start of the current stretch of training or validation

    def training_seconds(self) -> float:
        return self.training + time.perf_counter() - self.since

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.training, self.validation, self.since = 0.0, 0.0, time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.training, self.since = self.training_seconds(), time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            now = time.perf_counter()
            self.validation, self.since = self.validation + now - self.since, now

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if self.budget is not None:
            spent = trainer.strategy.broadcast(self.training_seconds() >= self.budget * 60)  # rank 0's, as max_time
            trainer.should_stop = trainer.should_stop or spent

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.training, self.since = self.training_seconds(), time.perf_counter()
        if trainer.is_global_zero:
            print(f"timed: {self.training / 60:.6f} training minutes", flush=True)
            print(f"timed: {self.validation / 60:.6f} validation minutes", flush=True)


class TestTimer(pl.Callback):
    """Times the test from its first batch to its end and prints test episodes per second and test minutes."""

    def __init__(self) -> None:
        self.start, self.episodes = 0.0, 0

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start, self.episodes = time.perf_counter(), 0

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, *args) -> None:
        self.episodes += batch.support.shape[0]

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            seconds = time.perf_counter() - self.start
            TEST_SECONDS.append(seconds)
            print(f"timed: {self.episodes * trainer.world_size / seconds:.6f} test episodes per second", flush=True)
            print(f"timed: {seconds / 60:.6f} test minutes", flush=True)


def timed_run_args(config: str, steps: int, warmup: int, test_episodes: int, log_root: str) -> list[str]:
    """train.py arguments for a timed fit of ``config``: ``warmup + steps`` training steps with StepTimer, no
    validation, a short closing test, no progress bar; settings of the run go after them."""
    return ["--config", config, "--trainer.max_steps", str(warmup + steps), "--data.batches_per_epoch",
            str(warmup + steps), "--trainer.limit_val_batches", "0", "--data.test_episodes", str(test_episodes),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--log_root", log_root, "--checkpoint_every", "100000",
            "--trainer.callbacks+=timing.StepTimer", "--trainer.callbacks.warmup", str(warmup)]

