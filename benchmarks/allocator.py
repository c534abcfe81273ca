"""Training steps per second of each algorithm's Omniglot 5-way 1-shot config through train.py, with glibc's
default allocator and with ``keep_freed_memory`` (lightning_meta/runtime.py, which train.py applies). An
allocator setting holds for a whole process, so every measurement is its own process; the two variants
alternate ``repeats`` times and the medians are reported.

    python benchmarks/allocator.py                      # every config below
    python benchmarks/allocator.py --configs maml.yaml  # a subset

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics

import timing
from results import hardware, record, this_command, today

CONFIGS = {  # config: (algorithm, timed steps)
    "proto.yaml": ("protonet", 60), "matching.yaml": ("matching", 100), "relation.yaml": ("relation", 100),
    "siamese.yaml": ("siamese", 100), "maml.yaml": ("maml", 20), "fomaml.yaml": ("fomaml", 30),
    "reptile.yaml": ("reptile", 60), "mann.yaml": ("mann", 60), "metanet.yaml": ("metanet", 15),
    "meta_lstm.yaml": ("meta_lstm", 15),
}  # fmt: skip
VARIANTS = {"glibc default": "train.keep_freed_memory = lambda: False", "freed memory kept": ""}


def train_py_args(config: str, steps: int, warmup: int) -> list[str]:
    return timing.timed_run_args(config, steps, warmup, 10, "/tmp/lightning_meta_allocator")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    for config in args.configs:
        algorithm, steps = CONFIGS[config]
        rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.repeats):
            for name, patch in VARIANTS.items():
                rates[name].append(timing.steps_per_second_in_child(train_py_args(config, steps, args.warmup), patch))
        medians = {name: statistics.median(r) for name, r in rates.items()}
        print(config, {name: f"{rate:.3f} steps/s" for name, rate in medians.items()}, flush=True)
        record({
            "kind": "allocator", "algorithm": algorithm, "dataset": "omniglot", "split": "vinyals", "ways": 5,
            "shots": 1, "config": config, "rates": medians, "hardware": hardware(), "date": today(),
            "command": this_command(),
            "note": f"Medians of {args.repeats} alternating processes of {steps} timed steps each (after "
                    f"{args.warmup}), through `python train.py {' '.join(train_py_args(config, steps, args.warmup))}`.",
        })  # fmt: skip


if __name__ == "__main__":
    main()
