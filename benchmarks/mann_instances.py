"""MANN and its LSTM baseline on Omniglot: accuracy by instance number (1st, 2nd, 3rd, 5th, 10th) beside Santoro
et al.'s table. Trains each config, tests its best checkpoint on 1,000 fixed test sequences, records the figures.

    python benchmarks/mann_instances.py                                  # mann.yaml, then mann_lstm_baseline.yaml
    python benchmarks/mann_instances.py --configs mann.yaml

Run it on an otherwise idle machine. The training command and the test command are recorded with the figures
(RESULTS.md, benchmarks/results.json).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from results import ROOT, record, train_config

LABELS = {"mann": "mann", "mann_lstm_baseline": "mann, LSTM baseline (memory: false)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["mann.yaml", "mann_lstm_baseline.yaml"])
    parser.add_argument("--test_episodes", type=int, default=1000)
    parser.add_argument("--log_root", default=str(ROOT / "lightning_logs" / "benchmarks"))
    args = parser.parse_args()
    for config in args.configs:
        run = train_config(config, args.log_root)
        data = run.data()
        metrics, note, test_minutes = run.test_all("--data.test_episodes", str(args.test_episodes))
        instances = {name.removeprefix("acc_instance_"): figures for name, figures in metrics.items()
                     if name.startswith("acc_instance_")}
        print(config, ", ".join(f"instance {n}: {mean:.2f} ± {ci95:.2f}" for n, (mean, ci95) in instances.items()))
        record({
            "kind": "instances", "algorithm": LABELS.get(Path(config).stem, Path(config).stem),
            **run.fields(test_minutes), "ways": data["n_way"], "shots": data["k_shot"], "within_alphabet": False,
            "inner_steps": None, "instances": instances, "test_episodes": args.test_episodes, "note": note,
        })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
