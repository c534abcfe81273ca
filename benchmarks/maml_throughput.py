"""Meta-iterations per second of MAML on Omniglot 5-way 1-shot, meta-batch 32 (configs/maml.yaml), for
second- and first-order MAML with the meta-batch run as a loop over tasks and vectorised with vmap, all in one
process through train.py (the first ``warmup`` steps are not timed). The four variants alternate
``repeats`` times and the medians are reported.

    python benchmarks/maml_throughput.py

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import timing
from results import ROOT, hardware, record, this_command, today

sys.path.insert(0, str(ROOT))
from lightning_meta import cli  # noqa: E402

VARIANTS = {"second-order, vmap": ("false", "vmap"), "second-order, loop": ("false", "loop"),
            "first-order, vmap": ("true", "vmap"), "first-order, loop": ("true", "loop")}  # fmt: skip


def train_py_args(first_order: str, meta_batch: str, steps: int, warmup: int) -> list[str]:
    return timing.timed_run_args("maml.yaml", steps, warmup, 25, "/tmp/lightning_meta_throughput") + [
        "--model.first_order", first_order, "--model.meta_batch", meta_batch]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, (first_order, meta_batch) in VARIANTS.items():
            cli.main(train_py_args(first_order, meta_batch, args.steps, args.warmup))
            rates[name].append(timing.RATES[-1])
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, rate in medians.items():
        print(f"{name}: {rate:.2f} meta-iterations/s ({32 * rate:.1f} tasks/s)")
    record({
        "kind": "throughput", "algorithm": "maml", "dataset": "omniglot", "split": "vinyals", "ways": 5, "shots": 1,
        "within_alphabet": False, "queries": 1, "unit": "meta-iterations (32 tasks)", "rates": medians,
        "hardware": hardware(), "date": today(), "command": this_command(),
        "note": f"Medians of {args.repeats} alternating runs of {args.steps} timed steps each, through "
                f"`python train.py {' '.join(train_py_args('FIRST_ORDER', 'META_BATCH', args.steps, args.warmup))}`.",
    })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
