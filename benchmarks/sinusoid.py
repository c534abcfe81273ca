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

from results import ROOT, record, train_config

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
        run = train_config(config, args.log_root)
        for inner_steps in args.steps:
            mse, ci95, note, test_minutes = run.test("--model.eval_inner_steps", str(inner_steps),
                                                     "--data.test_episodes", str(args.test_episodes), metric="mse")
            print(f"{CONFIGS[config]}, {inner_steps} inner steps: {mse:.3f} ± {ci95:.3f}")
            record({
                "kind": "regression", "algorithm": CONFIGS[config], **run.fields(test_minutes), "dataset": "sinusoid",
                "split": "-", "ways": 0, "shots": 10, "within_alphabet": False, "inner_steps": inner_steps,
                "test_episodes": args.test_episodes, "mse": mse, "ci95": ci95, "note": note,
            })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
