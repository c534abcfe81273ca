"""Distributed training: every algorithm under Lightning's DDP with 2 CPU processes (gloo), through train.py."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import ROOT, TINY, ok, state

from lightning_meta import ALGORITHMS
from lightning_meta.data import SyntheticDataModule
from lightning_meta.episode import episode_seed

TESTS = Path(__file__).resolve().parent
TASKS = 2  # per rank and training step
SMALL = ["--data", "SyntheticDataModule", "--trainer.max_steps", 3, "--data.batches_per_epoch", 3,
         "--data.tasks_per_batch", TASKS, "--data.val_episodes", 6, "--data.test_episodes", 6,
         "--data.eval_tasks_per_batch", 2, *TINY]
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", 2, "--trainer.strategy", "ddp"]
CONFIGS = [("proto.yaml", "protonet"), ("matching.yaml", "matching"), ("relation.yaml", "relation"),
           ("siamese.yaml", "siamese"), ("maml.yaml", "maml"), ("reptile.yaml", "reptile"), ("mann.yaml", "mann"),
           ("metanet.yaml", "metanet"), ("meta_lstm.yaml", "meta_lstm"), ("anil.yaml", "anil"),
           ("metasgd.yaml", "metasgd"), ("maml_plus_plus.yaml", "maml"), ("r2d2.yaml", "r2d2")]


def train(config: str, *args, log_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(ROOT / "train.py"), "--config", config, *map(str, args), "--log_root", str(log_root)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def recorded_keys(folder: Path, rank: int) -> dict[int, list[int]]:
    """step -> the keys of the tasks rank ``rank`` trained on, from faults.RecordEpisodes."""
    lines = (folder / f"rank{rank}.txt").read_text().split("\n")
    return {int(line.split()[0]): [int(k) for k in line.split()[1:]] for line in lines if line}


def validate_in_one_process(run_dir: Path, checkpoint: Path) -> float:
    """val/acc of ``checkpoint`` on the run's validation episodes, scored by one process."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    name = state(checkpoint)["lightning_meta"]["algorithm"]
    model = ALGORITHMS[name].load_from_checkpoint(checkpoint, weights_only=True)
    data = SyntheticDataModule(**config["data"]["init_args"])
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, max_steps=3,
                         enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    return trainer.validate(model, datamodule=data, verbose=False)[0]["val/acc"]


@pytest.mark.parametrize("config, name", CONFIGS)
def test_every_algorithm_trains_under_ddp_with_two_processes(config, name, tmp_path):
    """The ranks train on different episodes, together those of one process with twice the meta-batch; the run
    folder, its event file, config and checkpoints are written once; the validation and test metrics, reduced over
    the ranks, equal one process's on the same episodes."""
    logs, episodes = tmp_path / "logs", tmp_path / "episodes"
    result = train(config, *SMALL, *DDP, "--trainer.callbacks+=faults.RecordEpisodes", "--trainer.callbacks.folder",
                   episodes, log_root=logs)
    out = ok(result)

    ranks = [recorded_keys(episodes, rank) for rank in (0, 1)]
    assert sorted(ranks[0]) == sorted(ranks[1]) == [0, 1, 2]
    for step in range(3):  # one process's batch `step` holds training episodes 2T*step .. 2T*step + 2T - 1
        whole_batch = [episode_seed(0, "train", 2 * TASKS * step + i) for i in range(2 * TASKS)]
        assert ranks[0][step] == whole_batch[0::2] and ranks[1][step] == whole_batch[1::2]

    stem = config.removesuffix(".yaml")
    assert [p.name for p in (logs / stem).iterdir()] == ["version_0"]
    run_dir = logs / stem / "version_0"
    files = {p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("events")}
    assert files - {"projector_config.pbtxt"} == {"config.yaml", "hparams.yaml"}  # the projector: metric learners
    writers = {p.name.rsplit(".", 2)[1] for p in run_dir.glob("events.out.tfevents.*")}  # ....<pid>.<n>
    assert len(writers) == 1
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and checkpoints[1] == "last.ckpt" and re.fullmatch(r"best-3-.*\.ckpt", checkpoints[0])

    tested = re.findall(r"^test/acc .*$", out, re.M)
    assert "Grad strides do not match bucket view strides" not in out + result.stderr
    assert len(tested) == 1  # printed by rank 0 only
    best = run_dir / "checkpoints" / checkpoints[0]
    alone = ok(train(config, *SMALL, "--ckpt_path", best, "--test_only", "true", log_root=logs))
    assert re.findall(r"^test/acc .*$", alone, re.M) == tested

    events = EventAccumulator(str(run_dir))
    events.Reload()
    logged = events.Scalars("val/acc")
    assert len(logged) == 1  # one validation, at the end of the 3 steps
    assert abs(logged[0].value - validate_in_one_process(run_dir, best)) < 1e-3


@pytest.mark.parametrize("config, settings", [
    ("maml.yaml", ["--model.optimizer", "sgd"]),
    ("fomaml.yaml", ["--model.optimizer", "sgd"]),
    ("reptile.yaml", ["--model.backbone", "mlp"]),
])  # fmt: skip
def test_a_meta_batch_split_over_two_ranks_makes_the_update_of_one_process(config, settings, tmp_path):
    """Two ranks with T tasks each train the same weights as one process with 2T tasks, and not those of one
    process with T tasks. Adam divides by the gradient's size, so it turns rounding noise in a gradient that is
    0 (the conv biases before batch norm) into steps of its learning rate: MAML's outer Adam makes way for SGD here,
    and Reptile, whose inner loop is Adam (its moment averaged over the ranks and carried from step to step),
    adapts an MLP. Reptile's mini-batches (10 of its 50 support images) depend on the tasks' keys alone."""
    ok(train(config, *SMALL, *settings, *DDP, log_root=tmp_path / "split"))
    ok(train(config, *SMALL, *settings, "--data.tasks_per_batch", 2 * TASKS, log_root=tmp_path / "whole"))
    ok(train(config, *SMALL, *settings, log_root=tmp_path / "half"))
    stem = config.removesuffix(".yaml")
    split, whole, half = (state(tmp_path / run / stem / "version_0" / "checkpoints" / "last.ckpt")["state_dict"]
                          for run in ("split", "whole", "half"))
    for key, value in whole.items():
        assert torch.allclose(split[key], value, rtol=1e-4, atol=1e-6), key
    assert not all(torch.allclose(half[key], value, rtol=1e-4, atol=1e-6) for key, value in whole.items())


def test_torchrun_starts_the_run_that_lightning_starts(tmp_path):
    """The multi-node recipe of docs/distributed.md on one machine: torchrun starts the 2 processes and Lightning takes the ranks
    from their environment; the run trains the same weights as when Lightning starts the processes itself."""
    args = ["--config", "proto.yaml", *map(str, SMALL), *map(str, DDP)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(ROOT / "train.py"), *args, "--log_root", str(tmp_path / "torchrun")]
    out = ok(subprocess.run(torchrun, cwd=ROOT, capture_output=True, text=True, timeout=900))
    assert len(re.findall(r"^test/acc .*$", out, re.M)) == 1
    ok(train("proto.yaml", *SMALL, *DDP, log_root=tmp_path / "lightning"))
    started_by = {run: state(tmp_path / run / "proto" / "version_0" / "checkpoints" / "last.ckpt")["state_dict"]
                  for run in ("torchrun", "lightning")}
    for key, value in started_by["lightning"].items():
        assert torch.equal(started_by["torchrun"][key], value), key
