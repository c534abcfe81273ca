"""A callback that times training steps, for benchmarks that run train.py in-process."""

from __future__ import annotations

import time

import pytorch_lightning as pl

RATES: list[float] = []  # training steps per second of each timed fit, in order


class StepTimer(pl.Callback):
    """Times the training steps after the first ``warmup`` ones and appends steps per second to ``RATES``."""

    def __init__(self, warmup: int = 20) -> None:
        self.warmup = warmup
        self.start: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        RATES.append((trainer.global_step - self.warmup) / (time.perf_counter() - self.start))
        if trainer.is_global_zero:  # for runs in a subprocess (DDP)
            print(f"timed: {RATES[-1]:.6f} training steps per second", flush=True)


def timed_run_args(config: str, steps: int, warmup: int, test_episodes: int, log_root: str) -> list[str]:
    """train.py arguments for a timed fit of ``config``: ``warmup + steps`` training steps with StepTimer, no
    validation, a short closing test, no progress bar; settings of the run go after them."""
    return ["--config", config, "--trainer.max_steps", str(warmup + steps), "--data.batches_per_epoch",
            str(warmup + steps), "--trainer.limit_val_batches", "0", "--data.test_episodes", str(test_episodes),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--log_root", log_root, "--checkpoint_every", "100000",
            "--trainer.callbacks+=timing.StepTimer", "--trainer.callbacks.warmup", str(warmup)]
