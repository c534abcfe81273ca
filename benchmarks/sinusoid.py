"""Sinusoid regression (MAML paper, section 5.1): MAML, Reptile and the pretrained baseline, K = 10.

Trains each config, then tests its best checkpoint (by validation MSE) on 1,000 fixed test tasks after 1 and
after 10 inner steps on the K points, and records the mean squared errors.

    python benchmarks/sinusoid.py                                   # all three configs
    python benchmarks/sinusoid.py --configs maml_sinusoid.yaml --steps 1 10

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import torch
from results import ROOT, command_line, hardware, last_run, record, this_command, today, train_py

CONFIGS = {"maml_sinusoid.yaml": "maml", "reptile_sinusoid.yaml": "reptile",
           "sinusoid_pretrained.yaml": "pretrained baseline"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 10], help="inner steps at test time")
    parser.add_argument("--test_episodes", type=int, default=1000)
    parser.add_argument("--log_root", default=str(ROOT / "lightning_logs" / "benchmarks"))
    args = parser.parse_args()
    for config in args.configs:
        name = Path(config).stem
        log = Path(args.log_root) / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        train_args = ["--config", config, "--log_root", args.log_root, "--trainer.enable_progress_bar", "false"]
        start = time.perf_counter()
        train_py(*train_args, log=log)
        minutes = (time.perf_counter() - start) / 60
        run = last_run(Path(args.log_root) / name)
        best = next((run / "checkpoints").glob("best-*.ckpt"))
        steps = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
        for inner_steps in args.steps:
            test_args = ["--config", config, "--ckpt_path", str(best), "--test_only", "true",
                         "--model.eval_inner_steps", str(inner_steps), "--data.test_episodes", str(args.test_episodes),
                         "--trainer.enable_progress_bar", "false"]
            out = train_py(*test_args, log=log)
            mse, ci95 = map(float, re.search(r"^test/mse (\S+) ± (\S+)", out, re.M).groups())
            print(f"{CONFIGS[config]}, {inner_steps} inner steps: {mse:.3f} ± {ci95:.3f}")
            record({
                "kind": "regression", "algorithm": CONFIGS[config], "dataset": "sinusoid", "split": "-", "ways": 0,
                "shots": 10, "within_alphabet": False, "inner_steps": inner_steps, "test_episodes": args.test_episodes,
                "mse": mse, "ci95": ci95, "train_minutes": minutes, "train_steps": steps, "hardware": hardware(),
                "date": today(), "command": this_command(),
                "note": f"Trained by `{command_line(['train.py', *train_args])}` ({minutes:.1f} min wall clock, "
                        f"validation included); best checkpoint {best.name}, tested by "
                        f"`{command_line(['train.py', *test_args]).replace(str(best), 'BEST')}`.",
            })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
