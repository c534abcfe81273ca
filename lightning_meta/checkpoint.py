"""Checkpoints: checked before Lightning touches them (a wrong one is one clear line, not a traceback), written
atomically, and written when a scheduler stops the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.errors import ConfigError
from lightning_meta.io import write_atomic


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded without executing code (weights only) onto the CPU; a missing or
    unreadable file is one ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; pass an existing .ckpt file or --ckpt_path last")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"checkpoint {path} cannot be read ({reason}); it is truncated or not a Lightning "
                          f"checkpoint: pass another one (e.g. last.ckpt or a best-*.ckpt of the same run)") from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"checkpoint {path} is not a Lightning checkpoint; pass a .ckpt file written by train.py")
    return checkpoint


def algorithm_of(checkpoint: dict[str, Any]) -> str | None:
    """The name of the algorithm that wrote ``checkpoint`` (None: not written by lightning_meta)."""
    return checkpoint.get("lightning_meta", {}).get("algorithm")


def read_checkpoint(path: str | Path, model: MetaLearner, resumed_data: Any = None) -> dict[str, Any]:
    """Loads ``path`` without executing code (weights only) and checks that it was written by the same
    algorithm with parameters of the same names and shapes as ``model``, and, for a run to be resumed on
    ``resumed_data`` (an EpisodicDataModule), with the same training episodes."""
    checkpoint = load_checkpoint(path)
    written_by = algorithm_of(checkpoint)
    if written_by != model.name:
        raise ConfigError(f"checkpoint {path} was written by {written_by or 'something other than lightning_meta'}, "
                          f"not {model.name}; use a checkpoint of a {model.name} run or the config that wrote it")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items()}
    if found != expected:
        differing = sorted(set(expected.items()) ^ set(found.items()))[0][0]
        raise ConfigError(f"checkpoint {path} holds a {model.name} of another architecture (first difference: "
                          f"{differing}); use the backbone and sizes of the run that wrote it")
    trained_on = checkpoint.get(type(resumed_data).__qualname__, {}).get("training_episodes")
    if resumed_data is not None and trained_on is not None and trained_on != resumed_data.training_episodes():
        now = resumed_data.training_episodes()
        changed = ", ".join(f"{k} {trained_on.get(k)} -> {v}" for k, v in now.items() if trained_on.get(k) != v)
        raise ConfigError(f"checkpoint {path} was trained on other episodes than the config gives ({changed} in "
                          f"data); resume with the run's settings, or start a new run without --ckpt_path")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes every checkpoint through a temporary file that is flushed to disk and renamed into place, so that
    a process killed while writing (SIGKILL, power loss) leaves the previous checkpoint whole."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        write_atomic(checkpoint, Path(path))


class LastCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt`` every ``every_n_train_steps`` training steps, when training stops, and when the
    process gets SIGTERM (as a cluster scheduler sends before it kills a job: Lightning then stops after the
    current step), so that ``--ckpt_path last`` resumes from the latest step (episodes included: see
    ``EpisodeSchedule``). Weights that are no longer finite are never written: the last good checkpoint stays."""

    def __init__(self, dirpath: str | Path | None = None, every_n_train_steps: int = 500) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps,
                         enable_version_counter=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save_if_new(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.save_if_new(trainer)
            rank_zero_info(f"SIGTERM: stopped after step {trainer.global_step} with last.ckpt written; continue with "
                           f"--ckpt_path last")

    def save_if_new(self, trainer: pl.Trainer) -> None:
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if all(torch.isfinite(p).all() for p in trainer.lightning_module.parameters()):
            super()._save_checkpoint(trainer, filepath)
        else:
            rank_zero_warn(f"step {trainer.global_step}: the weights are no longer finite; {filepath} keeps the "
                           f"last good ones")
