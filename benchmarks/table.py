"""The Omniglot table: every algorithm (or a chosen subset) trained within a time budget per config, then tested on
the same 1,000 test episodes of each shape it is tested on; RESULTS.md gets one row per algorithm (5w1s, 5w5s,
20w1s, 20w5s, each beside the paper's number) and a throughput table (training and test episodes per second at
5-way 1-shot).

    python benchmarks/table.py                                   # every algorithm, 10 minutes per config
    python benchmarks/table.py --algorithms protonet maml --minutes 30
    python benchmarks/table.py --full                            # the papers' full training, no time limit (a GPU)
    python benchmarks/table.py --algorithms metanet meta_lstm --trainer.precision bf16-mixed

Other arguments (``--trainer.*``, ``--model.*``, ``--data.*``) go to train.py with every config, for training and
testing.

Each config trains for ``--minutes`` of wall clock (Lightning's ``trainer.max_time``) or its own ``max_steps``,
whichever ends first; ``--full`` sets the papers' training lengths instead where they state one. The
checkpoint tested is the best one by validation accuracy, or the last one where training ended before its first
validation. Run it on an otherwise idle machine; it reads Omniglot from $LIGHTNING_META_DATA/omniglot.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import torch
from results import (
    PAPER,
    ROOT,
    TABLE_SHAPES,
    command_line,
    hardware,
    parse_test_metrics,
    parse_with_settings,
    record,
    tasks_per_batch,
    this_command,
    today,
    train_py,
)

PLAN = {  # algorithm: the configs it is trained with, and the shapes each trained model is tested on
    "protonet": [("proto.yaml", ["5w1s", "20w1s"]), ("proto_5shot.yaml", ["5w5s", "20w5s"])],
    "matching": [("matching.yaml", ["5w1s", "20w1s"]), ("matching_5shot.yaml", ["5w5s", "20w5s"])],
    "relation": [("relation.yaml", ["5w1s", "20w1s"]), ("relation_5shot.yaml", ["5w5s", "20w5s"])],
    "siamese": [("siamese.yaml", ["5w1s", "5w5s", "20w1s", "20w5s"])],
    "maml": [("maml.yaml", ["5w1s", "5w5s"]), ("maml_20way.yaml", ["20w1s", "20w5s"])],
    "fomaml": [("fomaml.yaml", ["5w1s", "5w5s"]), ("fomaml_20way.yaml", ["20w1s", "20w5s"])],
    "reptile": [("reptile.yaml", ["5w1s", "5w5s"]), ("reptile_20way.yaml", ["20w1s", "20w5s"])],
    "mann": [("mann.yaml", ["5w1s", "5w5s"])],  # 5 output units: 5-way only
    "metanet": [("metanet.yaml", ["5w1s"]), ("metanet_20way.yaml", ["20w1s"])],
    "meta_lstm": [("meta_lstm.yaml", ["5w1s"]), ("meta_lstm_5shot.yaml", ["5w5s"])],
}
FULL = {  # --full: the papers' training lengths (training steps), where they state one (algorithms.md)
    "maml": 60000, "fomaml": 60000, "reptile": 100000, "mann": 100000 // 16,
}


def budget(minutes: float) -> str:
    seconds = max(1, round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def timed(out: str, what: str) -> float | None:
    found = re.search(rf"^timed: ([\d.]+) {what} per second$", out, re.M)
    return float(found[1]) if found else None


def train(config: str, settings: list[str], test_episodes: int, warmup: int, log_root: Path, log: Path) -> dict:
    """Trains ``config`` and tests the best checkpoint on the config's own shape (train.py's closing test); returns
    its run folder, checkpoint, steps, minutes, training rate and the closing test's output."""
    name = Path(config).stem
    args = ["--config", config, *settings, "--data.test_episodes", str(test_episodes), "--log_root", str(log_root),
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=timing.StepTimer",
            "--trainer.callbacks.warmup", str(warmup), "--trainer.callbacks+=timing.TestTimer"]
    start = time.perf_counter()
    out = train_py(*args, log=log)
    minutes = (time.perf_counter() - start) / 60
    run = max((log_root / name).glob("version_*"), key=lambda p: int(p.name.removeprefix("version_")))
    last = run / "checkpoints" / "last.ckpt"
    best = next((run / "checkpoints").glob("best-*.ckpt"), last)
    steps = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    return {"args": args, "minutes": minutes, "steps": steps, "checkpoint": best, "out": out,
            "training_steps_per_second": timed(out, "training steps")}


def tested_shape(out: str) -> str:
    """The shape train.py says it tested (``(omniglot/vinyals, 5-way 1-shot, 1000 episodes)``), as ``5w1s``."""
    found = re.search(r"^test/\S+ .*?(\d+)-way (\d+)-shot", out, re.M)
    return f"{found[1]}w{found[2]}s" if found else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=list(PLAN), choices=list(PLAN))
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each config")
    parser.add_argument("--full", action="store_true", help="the papers' training lengths, no time limit")
    parser.add_argument("--test_episodes", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=5, help="training steps left out of the timing")
    parser.add_argument("--data", help="another data module for every config (the tests: SyntheticDataModule)")
    parser.add_argument("--log_root", type=Path, default=ROOT / "lightning_logs" / "table")
    args, settings = parse_with_settings(parser)
    args.log_root.mkdir(parents=True, exist_ok=True)
    given = [*(["--data", args.data] if args.data else []), *settings]  # train.py settings for every config
    for algorithm in args.algorithms:
        log = args.log_root / f"{algorithm}.log"
        cells, trainings, throughput = {}, [], {}
        for config, shapes in PLAN[algorithm]:
            length = ["--trainer.max_steps", str(FULL[algorithm])] if args.full and algorithm in FULL else []
            limit = [] if args.full else ["--trainer.max_time", budget(args.minutes)]
            trained = train(config, [*given, *length, *limit], args.test_episodes, args.warmup, args.log_root, log)
            trainings.append({"config": config, "steps": trained["steps"], "minutes": trained["minutes"],
                              "command": command_line(["train.py", *trained["args"]])})
            for shape in shapes:
                if shape == shapes[0]:  # the config's own shape: train.py's closing test
                    out = trained["out"]
                    if tested_shape(out) != shape:
                        raise SystemExit(f"{config} tested {tested_shape(out)} after training, not {shape}; fix PLAN")
                else:
                    ways, shots = TABLE_SHAPES[shape]
                    out = train_py("--config", config, *given, "--ckpt_path", str(trained["checkpoint"]),
                                   "--test_only", "true", "--data.eval_n_way", str(ways), "--data.eval_k_shot",
                                   str(shots), "--data.test_episodes", str(args.test_episodes),
                                   "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=timing.TestTimer",
                                   log=log)
                cells[shape] = parse_test_metrics(out)["acc"]
                if shape == "5w1s":
                    steps_per_second = trained["training_steps_per_second"]
                    throughput = {"training episodes": steps_per_second and steps_per_second * tasks_per_batch(config),
                                  "test episodes": timed(out, "test episodes")}
                print(f"{algorithm} {shape}: {cells[shape][0]:.2f} ± {cells[shape][1]:.2f}", flush=True)
        record({
            "kind": "table", "algorithm": algorithm, "dataset": args.data or "omniglot", "split": "vinyals",
            "ways": None, "shots": None, "within_alphabet": False, "cells": cells,
            "paper": {shape: PAPER.get((algorithm, "omniglot", *TABLE_SHAPES[shape])) for shape in TABLE_SHAPES},
            "trainings": trainings, "throughput": throughput, "test_episodes": args.test_episodes,
            "budget": "papers' training lengths" if args.full else f"{args.minutes:g} min per config",
            "hardware": hardware(), "date": today(), "command": this_command(),
        })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
