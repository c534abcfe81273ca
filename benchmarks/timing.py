"""Callbacks that time training steps and test episodes, for benchmarks that run train.py (in-process, or as a
subprocess: they also print their rates)."""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import yaml
from results import ROOT, hardware, record, this_command, today

RATES: list[float] = []  # training steps per second of each timed fit, in order


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


class TestTimer(pl.Callback):
    """Times the test from its first batch to its end and prints test episodes per second."""

    def __init__(self) -> None:
        self.start, self.episodes = 0.0, 0

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start, self.episodes = time.perf_counter(), 0

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, *args) -> None:
        self.episodes += batch.support.shape[0]

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            rate = self.episodes * trainer.world_size / (time.perf_counter() - self.start)
            print(f"timed: {rate:.6f} test episodes per second", flush=True)


def timed_run_args(config: str, steps: int, warmup: int, test_episodes: int, log_root: str) -> list[str]:
    """train.py arguments for a timed fit of ``config``: ``warmup + steps`` training steps with StepTimer, no
    validation, a short closing test, no progress bar; settings of the run go after them."""
    return ["--config", config, "--trainer.max_steps", str(warmup + steps), "--data.batches_per_epoch",
            str(warmup + steps), "--trainer.limit_val_batches", "0", "--data.test_episodes", str(test_episodes),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--log_root", log_root, "--checkpoint_every", "100000",
            "--trainer.callbacks+=timing.StepTimer", "--trainer.callbacks.warmup", str(warmup)]


CHILD = """
import sys
sys.path[:0] = [{bench!r}, {root!r}]
import timing
from lightning_meta import cli
{patch}
cli.main({args!r})
print("STEPS_PER_SECOND", timing.RATES[-1])
"""


def steps_per_second_in_child(args: list[str], patch: str = "") -> float:
    """Training steps per second of ``python train.py ARGS`` (StepTimer among its callbacks) in a fresh process,
    after the Python statements ``patch`` (a setting that holds for a whole process, or a switch under test)."""
    code = CHILD.format(bench=str(ROOT / "benchmarks"), root=str(ROOT), patch=patch, args=args)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.split("STEPS_PER_SECOND")[-1])


def episode_shape(config: str) -> dict[str, int]:
    """The training episodes' ways and shots of a config in configs/."""
    data = yaml.safe_load((ROOT / "configs" / config).read_text())["data"]["init_args"]
    return {"ways": data["n_way"], "shots": data["k_shot"]}


def compare_variants(description: str, kind: str, configs: dict[str, tuple[str, int]], variants: dict[str, str],
                     log_root: str, repeats: int) -> None:
    """The command line of a benchmark that times the training steps of configs (name: (algorithm, timed steps))
    under variants (name: Python statements run before train.py, each measurement in a process of its own). The
    variants alternate ``--repeats`` times per config; their medians are recorded as ``kind``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(configs), choices=list(configs))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=repeats)
    args = parser.parse_args()
    for config in args.configs:
        algorithm, steps = configs[config]
        run = timed_run_args(config, steps, args.warmup, 10, log_root)
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, patch in variants.items():
                rates[name].append(steps_per_second_in_child(run, patch))
        record_rates(kind, algorithm, config, {name: statistics.median(r) for name, r in rates.items()},
                     f"Medians of {args.repeats} alternating processes of {steps} timed steps each (after "
                     f"{args.warmup}), through `python train.py {' '.join(run)}`.")


def record_rates(kind: str, algorithm: str, config: str, rates: dict[str, float], note: str) -> None:
    """Prints and records the training steps per second of a config under each variant."""
    print(config, {name: f"{rate:.3f} steps/s" for name, rate in rates.items()}, flush=True)
    record({
        "kind": kind, "algorithm": algorithm, "dataset": "omniglot", "split": "vinyals", **episode_shape(config),
        "config": config, "rates": rates, "hardware": hardware(), "date": today(), "command": this_command(),
        "note": note,
    })  # fmt: skip


def built_from_config(config: str) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    """The model and the set-up data module of a config in configs/, its seed applied, without a trainer."""
    settings = yaml.safe_load((ROOT / "configs" / config).read_text())
    pl.seed_everything(settings.get("seed_everything", 0), verbose=False)

    def build(section: str, **extra) -> object:
        module, name = settings[section]["class_path"].rsplit(".", 1)
        return getattr(importlib.import_module(module), name)(**settings[section]["init_args"], **extra)

    data = build("data")
    data.prepare_data()
    data.setup("fit")
    return build("model", image_shape=data.image_shape), data


def compare_interleaved(description: str, kind: str, configs: dict[str, tuple[str, int]],
                        variants: dict[str, Callable[[], contextlib.AbstractContextManager]]) -> None:
    """The command line of a benchmark that times the training steps of configs (name: (algorithm, timed steps))
    under variants (name: a context manager factory that switches it on), in one process: every variant has a model
    of its own, all from the same start, and they take turns step by step on the same training episodes, so that the
    machine's changes of speed over seconds and minutes fall on all of them alike. A step is the config's loss,
    backward pass, gradient clipping and an Adam step at the config's learning rate (its schedule left out); the rates
    are recorded as ``kind``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(configs), choices=list(configs))
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    for config in args.configs:
        algorithm, steps = configs[config]
        model, data = built_from_config(config)
        clip = yaml.safe_load((ROOT / "configs" / config).read_text())["trainer"].get("gradient_clip_val", math.inf)
        learners = {}
        for name in variants:
            learner = copy.deepcopy(model)
            learners[name] = (learner, torch.optim.Adam(learner.parameters(), lr=learner.hparams.lr))
        seconds = dict.fromkeys(variants, 0.0)
        episodes = iter(data.train_dataloader())
        for step in range(args.warmup + steps):
            episode = data.on_after_batch_transfer(next(episodes), 0)
            for name, switch_on in variants.items():
                learner, optimizer = learners[name]
                with switch_on():
                    start = time.perf_counter()
                    loss, _ = learner.meta_loss(episode)
                    optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(learner.parameters(), clip)
                    optimizer.step()
                    if step >= args.warmup:
                        seconds[name] += time.perf_counter() - start
        record_rates(kind, algorithm, config, {name: steps / s for name, s in seconds.items()},
                     f"One process, {torch.get_num_threads()} threads; the variants took turns step by step on the "
                     f"same episodes, {steps} timed steps each (after {args.warmup}).")
