"""Few-shot accuracy on Omniglot (vinyals split): train with a config, then test the best checkpoint on
1,000 fixed test episodes of each requested shape, and record the results.

    python benchmarks/omniglot_accuracy.py                                   # proto.yaml; 5w1s 5w5s 20w1s 20w5s
    python benchmarks/omniglot_accuracy.py --config proto_5shot.yaml --shapes 5w5s 20w5s
    python benchmarks/omniglot_accuracy.py --config maml.yaml --shapes 5w1s 5w5s
    python benchmarks/omniglot_accuracy.py --config fomaml.yaml --label fomaml --shapes 5w1s 5w5s

Run it on an otherwise idle machine. The training command and each test command are recorded with the
figures (RESULTS.md, benchmarks/results.json).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import torch
from results import ROOT, command_line, hardware, last_run, record, this_command, today, train_py

SHAPES = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="proto.yaml")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--test_episodes", type=int, default=1000)
    parser.add_argument("--log_root", default=str(ROOT / "lightning_logs" / "benchmarks"))
    parser.add_argument("--label", help="the algorithm's name in RESULTS.md (default: the checkpoint's algorithm)")
    args = parser.parse_args()
    name = Path(args.config).stem
    log = Path(args.log_root) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)

    train_args = ["--config", args.config, "--log_root", args.log_root, "--trainer.enable_progress_bar", "false"]
    start = time.perf_counter()
    train_py(*train_args, log=log)
    minutes = (time.perf_counter() - start) / 60
    run = last_run(Path(args.log_root) / name)
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    steps, algorithm = last["global_step"], args.label or last["lightning_meta"]["algorithm"]

    for shape in args.shapes:
        ways, shots = SHAPES[shape]
        test_args = ["--config", args.config, "--ckpt_path", str(best), "--test_only", "true",
                     "--data.eval_n_way", str(ways), "--data.eval_k_shot", str(shots),
                     "--data.test_episodes", str(args.test_episodes), "--trainer.enable_progress_bar", "false"]
        out = train_py(*test_args, log=log)
        acc, ci95 = map(float, re.search(r"^test/acc (\S+) ± (\S+)", out, re.M).groups())
        print(f"{shape}: {acc:.2f} ± {ci95:.2f}")
        record({
            "kind": "accuracy", "algorithm": algorithm, "dataset": "omniglot", "split": "vinyals", "ways": ways,
            "shots": shots, "within_alphabet": False, "test_episodes": args.test_episodes, "acc": acc, "ci95": ci95,
            "train_minutes": minutes, "train_steps": steps, "hardware": hardware(), "date": today(),
            "command": this_command(),
            "note": f"Trained by `{command_line(['train.py', *train_args])}` ({minutes:.1f} min wall clock, "
                    f"validation included); best checkpoint {best.name}, tested by "
                    f"`{command_line(['train.py', *test_args]).replace(str(best), 'BEST')}`.",
        })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
