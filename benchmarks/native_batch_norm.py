"""Training steps per second of the learners that never differentiate through their inner steps (Reptile,
first-order MAML, the LSTM meta-learner), with batch norm in plain tensor operations (exact to every order under
vmap) and through PyTorch's native kernel (``GradientLearner.first_derivatives_only``, what they use). Each
measurement is its own process of train.py; the two variants alternate ``repeats`` times and the medians are
reported.

    python benchmarks/native_batch_norm.py
    python benchmarks/native_batch_norm.py --configs reptile.yaml

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics

import timing
from results import hardware, record, this_command, today

CONFIGS = {"reptile.yaml": ("reptile", 60), "fomaml.yaml": ("fomaml", 30), "meta_lstm.yaml": ("meta_lstm", 15)}
EXACT = ("import contextlib\nfrom lightning_meta.algorithms.gradient import GradientLearner\n"
         "GradientLearner.first_derivatives_only = lambda self, first_order=True: contextlib.nullcontext()")
VARIANTS = {"tensor operations": EXACT, "native kernel": ""}


def train_py_args(config: str, steps: int, warmup: int) -> list[str]:
    return timing.timed_run_args(config, steps, warmup, 10, "/tmp/lightning_meta_native_batch_norm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
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
            "kind": "native_batch_norm", "algorithm": algorithm, "dataset": "omniglot", "split": "vinyals",
            "ways": 5, "shots": 1, "config": config, "rates": medians, "hardware": hardware(), "date": today(),
            "command": this_command(),
            "note": f"Medians of {args.repeats} alternating processes of {steps} timed steps each (after "
                    f"{args.warmup}), through `python train.py {' '.join(train_py_args(config, steps, args.warmup))}`.",
        })  # fmt: skip


if __name__ == "__main__":
    main()
