"""Callbacks that stage faults in train.py subprocesses (``--trainer.callbacks+=faults.X``, with tests/ on the path)."""

import time

import pytorch_lightning as pl
import torch


class Pause(pl.Callback):
    """Reports every finished training step on stdout and then waits ``seconds``, so that a test can signal the
    process at a chosen point of a run; the weights are untouched."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        print(f"step {trainer.global_step}", flush=True)
        time.sleep(self.seconds)


class PoisonWeights(pl.Callback):
    """Turns one weight of every parameter tensor into NaN at the end of training step ``step``, as a diverging
    update would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter[(0,) * parameter.dim()] = float("nan")
