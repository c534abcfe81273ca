import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LIGHTNING_META_DATA", ROOT.parent / "shared" / "data"))

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # pytest -n N: N processes run the tests
if WORKERS > 1:  # the cores shared among them, and among the train.py processes their tests start
    THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared data folder (``$LIGHTNING_META_DATA``, else ``../shared/data``) with Omniglot in it."""
    if not (DATA / "omniglot" / "images_background.zip").exists():
        pytest.skip(f"Omniglot not found under {DATA}; set LIGHTNING_META_DATA to a folder holding omniglot/")
    return DATA


@pytest.fixture(scope="session")
def cifar100_root() -> Path:
    """``cifar100/`` of the shared data folder: the split files and the class-folder (JPEG) copy of CIFAR-100."""
    if not (DATA / "cifar100" / "cifar100_jpeg_q75.zip").exists():
        pytest.skip(f"CIFAR-100 not found under {DATA}; set LIGHTNING_META_DATA to a folder holding cifar100/")
    return DATA / "cifar100"


@pytest.fixture(scope="session")
def omniglot(data_root):
    from lightning_meta.data.omniglot import load_characters

    return load_characters(data_root)


@pytest.fixture
def trainer():
    """A factory of quiet CPU trainers for ``steps`` training steps, with gradients allowed in evaluation."""

    def make(steps: int = 1) -> pl.Trainer:
        return pl.Trainer(max_steps=steps, inference_mode=False, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)

    return make
