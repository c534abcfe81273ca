"""Checks a checkpoint before Lightning touches it, so that a wrong one is one clear line, not a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.errors import ConfigError


def read_checkpoint(path: str | Path, model: MetaLearner) -> dict[str, Any]:
    """Loads ``path`` without executing code (weights only) and checks that it was written by the same
    algorithm with parameters of the same names and shapes as ``model``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; pass an existing .ckpt file or --ckpt_path last")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"checkpoint {path} cannot be read ({reason}); it is truncated or not a Lightning "
                          f"checkpoint: pass another one (e.g. last.ckpt or a best-*.ckpt of the same run)") from None
    written_by = checkpoint.get("lightning_meta", {}).get("algorithm") if isinstance(checkpoint, dict) else None
    if written_by != model.name:
        raise ConfigError(f"checkpoint {path} was written by {written_by or 'something other than lightning_meta'}, "
                          f"not {model.name}; use a checkpoint of a {model.name} run or the config that wrote it")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items()}
    if found != expected:
        differing = sorted(set(expected.items()) ^ set(found.items()))[0][0]
        raise ConfigError(f"checkpoint {path} holds a {model.name} of another architecture (first difference: "
                          f"{differing}); use the backbone and sizes of the run that wrote it")
    return checkpoint


class LastCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt`` every ``every_n_train_steps`` training steps and when training stops, so that
    ``--ckpt_path last`` resumes from the latest step (episodes included: see ``EpisodeSchedule``)."""

    def __init__(self, dirpath: str | Path | None = None, every_n_train_steps: int = 500) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps,
                         enable_version_counter=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
