"""Callbacks for train.py subprocesses in tests (``--trainer.callbacks+=faults.X``, with tests/ on the path): ones that
stage faults, and one that records what each rank trains on."""

import time
from pathlib import Path

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


class RecordEpisodes(pl.Callback):
    """Appends ``step key key ...`` (the keys of the tasks of every training batch) to ``folder/rank<r>.txt``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}.txt", "a") as file:
            file.write(" ".join(map(str, [trainer.global_step, *batch.keys.tolist()])) + "\n")
