"""Crash safety: atomic checkpoint writes, SIGTERM and SIGKILL mid-run, a loss that stops being finite."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli import ROOT, TINY, ok, state

sys.path.insert(0, str(ROOT))
from lightning_meta import TrainingError, cli  # noqa: E402

TESTS = Path(__file__).resolve().parent
RUN = ["--config", "proto_synthetic.yaml", "--trainer.max_steps", 30, "--data.batches_per_epoch", 12,
       "--data.val_episodes", 10, "--data.test_episodes", 10, *TINY]


def start(*args, log_root: Path) -> subprocess.Popen:
    """train.py in the background, with the fault-staging callbacks of tests/faults.py importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(ROOT / "train.py"), *map(str, args), "--log_root", str(log_root)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def reported_steps(process: subprocess.Popen):
    """The training steps the Pause callback reports as they finish."""
    for line in process.stdout:
        if line.startswith("step "):
            yield int(line.split()[1])
    raise AssertionError(f"the run ended early: {process.stderr.read()[-2000:]}")


def last_checkpoint(log_root: Path) -> Path:
    return log_root / "proto_synthetic" / "version_0" / "checkpoints" / "last.ckpt"


def assert_same_weights(a: Path, b: Path) -> None:
    a, b = state(a), state(b)
    assert a["global_step"] == b["global_step"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from pathlib import Path
from lightning_meta.io import write_atomic
path = Path({path!r})
for i in range(1, 10**6):
    write_atomic({{"version": torch.full((1_000_000,), i)}}, path)
    print(i, flush=True)
"""


def test_a_checkpoint_killed_while_being_written_leaves_the_previous_one_whole(tmp_path):
    """SIGKILL at random moments of a loop that rewrites an 8 MB file: the file always loads, whole."""
    path, rng = tmp_path / "last.ckpt", random.Random(0)
    for _ in range(5):
        writer = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), path=str(path))],
                                  stdout=subprocess.PIPE, text=True)
        writer.stdout.readline()  # one version written
        time.sleep(rng.uniform(0.0, 0.3))
        writer.kill()
        writer.wait()
        version = torch.load(path, weights_only=True)["version"]
        assert version.numel() == 1_000_000 and bool((version == version[0]).all())
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["last.ckpt"]


def test_sigterm_saves_a_checkpoint_exits_cleanly_and_the_run_resumes_exactly(tmp_path):
    ok(subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, RUN), "--log_root", str(tmp_path / "a")],
                      cwd=ROOT, capture_output=True, text=True, timeout=600))
    run = start(*RUN, "--checkpoint_every", 1000, "--trainer.callbacks+=faults.Pause", log_root=tmp_path / "b")
    next(step for step in reported_steps(run) if step == 7)
    run.send_signal(signal.SIGTERM)
    stopped = finish(run)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "SIGTERM: stopped after step" in stopped.stderr
    step = state(last_checkpoint(tmp_path / "b"))["global_step"]
    assert 7 <= step < 30
    ok(finish(start(*RUN, "--ckpt_path", "last", log_root=tmp_path / "b")))
    assert_same_weights(last_checkpoint(tmp_path / "a"), last_checkpoint(tmp_path / "b"))


def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_weights(tmp_path):
    """SIGKILL three times at random steps (checkpoints every 2 steps), each time resuming with --ckpt_path last:
    the final weights equal those of a run never interrupted, bit for bit."""
    ok(finish(start(*RUN, "--checkpoint_every", 2, log_root=tmp_path / "a")))
    rng, resume = random.Random(1), []
    for _ in range(3):
        run = start(*RUN, "--checkpoint_every", 2, "--trainer.callbacks+=faults.Pause", "--trainer.callbacks.seconds",
                    0.01, *resume, log_root=tmp_path / "b")
        steps, more = reported_steps(run), rng.randrange(3, 8)  # step 2 is saved once step 3 is reported
        for _ in range(more):
            next(steps)
        run.kill()
        run.wait()
        assert state(last_checkpoint(tmp_path / "b"))["global_step"] > 0
        resume = ["--ckpt_path", "last"]
    ok(finish(start(*RUN, "--checkpoint_every", 2, *resume, log_root=tmp_path / "b")))
    assert_same_weights(last_checkpoint(tmp_path / "a"), last_checkpoint(tmp_path / "b"))


def test_a_loss_that_is_no_longer_finite_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    """Weights turned NaN at step 6 (checkpoints every 3 steps): step 6's checkpoint is not written, step 7's loss
    stops the run with one line naming the step and the algorithm; last.ckpt holds step 3's finite weights."""
    result = finish(start(*RUN, "--checkpoint_every", 3, "--trainer.callbacks+=faults.PoisonWeights",
                          "--trainer.callbacks.step", 6, log_root=tmp_path))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [errors[0]] and "protonet: the training loss is nan at step 6" in errors[0], result.stderr[-2000:]
    last = state(last_checkpoint(tmp_path))
    assert last["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


@pytest.mark.parametrize("config, name", [
    ("proto.yaml", "protonet"), ("matching.yaml", "matching"), ("relation.yaml", "relation"),
    ("siamese.yaml", "siamese"), ("maml.yaml", "maml"), ("reptile.yaml", "reptile"), ("mann.yaml", "mann"),
    ("metanet.yaml", "metanet"), ("meta_lstm.yaml", "meta_lstm"),
])  # fmt: skip
def test_every_algorithm_stops_on_a_loss_that_is_not_finite(config, name, tmp_path):
    """Each algorithm's Omniglot config on the synthetic set, weights poisoned after step 1: step 2 stops."""
    with pytest.raises(TrainingError, match=f"^{name}: the training loss is nan at step 1;"):
        cli.main(["--config", config, "--data", "SyntheticDataModule", "--trainer.max_steps", "4",
                  "--data.batches_per_epoch", "4", "--data.val_episodes", "2", "--data.test_episodes", "2",
                  "--data.eval_tasks_per_batch", "2", "--trainer.callbacks+=faults.PoisonWeights",
                  "--trainer.callbacks.step", "1", "--log_root", str(tmp_path), *TINY])
