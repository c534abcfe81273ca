"""The Omniglot table: every algorithm's Omniglot configs (or a chosen subset), each trained for a budget of training
time, then tested on the same 1,000 test episodes of each shape its model is tested on. One record per trained
config: its cells (5w1s, 5w5s, 20w1s, 20w5s, where tested), the shape it was trained on, its batch-norm mode, and
its training, validation and test minutes. RESULTS.md shows the rows measured at one commit on one machine together.

    python benchmarks/table.py                                   # every algorithm, 10 minutes of training per config
    python benchmarks/table.py --algorithms protonet maml        # a subset
    python benchmarks/table.py --full                            # the papers' training lengths, no time limit (a GPU)

Resumable: a config already recorded at this commit on this machine (CPU model, instruction set, threads,
accelerator) with the same budget and settings is skipped, so the table can be completed over several sittings;
``--rerun`` trains it again (the new record supersedes the old one, which stays in the records).

Other arguments (``--trainer.*``, ``--model.*``, ``--data.*``) go to train.py with every config, for training and
testing. The budget counts training only (``timing.TrainingClock``): validation and the test are timed and recorded
beside it. The checkpoint tested is the best one by validation accuracy, or the last one where training ended
before its first validation. Run it on an otherwise idle machine; it reads Omniglot from
$LIGHTNING_META_DATA/omniglot.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from results import (
    CPU_SETTINGS,
    PAPER,
    ROOT,
    TABLE_PLAN,
    TABLE_SHAPES,
    command_line,
    measured_here,
    parse_test_metrics,
    parse_with_settings,
    record,
    run_fields,
    tasks_per_batch,
    timed,
    train_py,
)

FULL = {  # --full: the papers' training lengths (training steps), where they state one (algorithms.md)
    "maml": 60000, "fomaml": 60000, "reptile": 100000, "mann": 100000 // 16,
}  # fmt: skip


def train(config: str, settings: list[str], test_episodes: int, warmup: int, log_root: Path, log: Path) -> dict:
    """Trains ``config`` and tests the best checkpoint on the config's own shape (train.py's closing test); returns
    its run folder, checkpoint, the closing test's output and the training rate."""
    name = Path(config).stem
    args = ["--config", config, *settings, "--data.test_episodes", str(test_episodes), "--log_root", str(log_root),
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=timing.StepTimer",
            "--trainer.callbacks.warmup", str(warmup), "--trainer.callbacks+=timing.TestTimer"]
    out = train_py(*args, log=log)
    run = max((log_root / name).glob("version_*"), key=lambda p: int(p.name.removeprefix("version_")))
    last = run / "checkpoints" / "last.ckpt"
    best = next((run / "checkpoints").glob("best-*.ckpt"), last)
    return {"args": args, "run": run, "checkpoint": best, "out": out,
            "training_steps_per_second": timed(out, "training steps per second")}


def tested_shape(out: str) -> str:
    """The shape train.py says it tested (``(omniglot/vinyals, 5-way 1-shot, 1000 episodes)``), as ``5w1s``."""
    found = re.search(r"^test/\S+ .*?(\d+)-way (\d+)-shot", out, re.M)
    return f"{found[1]}w{found[2]}s" if found else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=list(TABLE_PLAN), choices=list(TABLE_PLAN))
    parser.add_argument("--minutes", type=float, default=10.0, help="training time of each config (validation apart)")
    parser.add_argument("--full", action="store_true", help="the papers' training lengths, no time limit")
    parser.add_argument("--test_episodes", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=5, help="training steps left out of the timed rate")
    parser.add_argument("--data", help="another data module for every config (the tests: SyntheticDataModule)")
    parser.add_argument("--rerun", action="store_true", help="train configs already recorded here again")
    parser.add_argument("--log_root", type=Path, default=ROOT / "lightning_logs" / "table")
    args, settings = parse_with_settings(parser)
    args.log_root.mkdir(parents=True, exist_ok=True)
    given = [*(["--data", args.data] if args.data else []), *settings]  # train.py settings for every config
    budget = "papers' training lengths" if args.full else f"{args.minutes:g} min of training"
    for algorithm in args.algorithms:
        log = args.log_root / f"{algorithm}.log"
        for config, shapes in TABLE_PLAN[algorithm]:
            settings = [*given, *CPU_SETTINGS.get(config, [])]
            if not args.rerun and measured_here(kind="table", config=config, budget=budget, settings=settings,
                                                test_episodes=args.test_episodes):
                print(f"{algorithm} {config}: recorded at this commit on this machine, skipped", flush=True)
                continue
            length = ["--trainer.max_steps", str(FULL[algorithm])] if args.full and algorithm in FULL else []
            clock = ["--trainer.callbacks+=timing.TrainingClock",
                     *([] if args.full else ["--trainer.callbacks.budget", f"{args.minutes:g}"])]
            trained = train(config, [*settings, *length, *clock], args.test_episodes, args.warmup, args.log_root, log)
            cells, throughput, test_minutes = {}, {}, 0.0
            for shape in shapes:
                if shape == shapes[0]:  # the config's own shape: train.py's closing test
                    out = trained["out"]
                    if tested_shape(out) != shape:
                        raise SystemExit(f"{config} tested {tested_shape(out)} after training, not {shape}; fix PLAN")
                else:
                    ways, shots = TABLE_SHAPES[shape]
                    out = train_py("--config", config, *settings, "--ckpt_path", str(trained["checkpoint"]),
                                   "--test_only", "true", "--data.eval_n_way", str(ways), "--data.eval_k_shot",
                                   str(shots), "--data.test_episodes", str(args.test_episodes),
                                   "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=timing.TestTimer",
                                   log=log)
                cells[shape] = parse_test_metrics(out)["acc"]
                test_minutes += timed(out, "test minutes")
                if shape == "5w1s":
                    steps_per_second = trained["training_steps_per_second"]
                    throughput = {"training episodes": steps_per_second and steps_per_second * tasks_per_batch(config),
                                  "test episodes": timed(out, "test episodes per second")}
                print(f"{algorithm} {config} {shape}: {cells[shape][0]:.2f} ± {cells[shape][1]:.2f}", flush=True)
            fields = run_fields(trained["run"], config, settings, trained["out"], test_minutes)
            record({
                "kind": "table", "algorithm": algorithm, **fields, "ways": None, "shots": None,
                "within_alphabet": False, "cells": cells,
                "paper": {shape: PAPER.get((algorithm, "omniglot", *TABLE_SHAPES[shape])) for shape in shapes},
                "budget": budget, "test_episodes": args.test_episodes, "throughput": throughput,
                "train_command": command_line(["train.py", *trained["args"]]),
            })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
