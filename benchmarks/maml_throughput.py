"""Meta-iterations per second of MAML and its family on Omniglot 5-way 1-shot (configs/maml.yaml, anil.yaml,
metasgd.yaml: one inner step, meta-batch 32) or 20-way 1-shot (the *_20way.yaml configs: five inner steps for MAML
and ANIL, meta-batch 16): second- and first-order MAML with the meta-batch run as a loop over tasks and vectorised
with vmap, ANIL and Meta-SGD (second order, vmap), all in one process through train.py (the first ``warmup`` steps
are not timed). The variants alternate ``repeats`` times and the medians are reported, with each one's speed over
second-order MAML's (vmap) from the same runs.

    python benchmarks/maml_throughput.py
    python benchmarks/maml_throughput.py --shape 20w1s --variants "second-order, vmap" "anil, vmap"

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import timing
import yaml
from results import ROOT, hardware, record, this_command, today

sys.path.insert(0, str(ROOT))
from lightning_meta import cli  # noqa: E402

CONFIGS = {"5w1s": {"maml": "maml.yaml", "anil": "anil.yaml", "metasgd": "metasgd.yaml"},
           "20w1s": {"maml": "maml_20way.yaml", "anil": "anil_20way.yaml", "metasgd": "metasgd_20way.yaml"}}
VARIANTS = {  # name: algorithm, first_order, meta_batch
    "second-order, vmap": ("maml", "false", "vmap"), "second-order, loop": ("maml", "false", "loop"),
    "first-order, vmap": ("maml", "true", "vmap"), "first-order, loop": ("maml", "true", "loop"),
    "anil, vmap": ("anil", "false", "vmap"), "metasgd, vmap": ("metasgd", "false", "vmap"),
}  # fmt: skip
REFERENCE = "second-order, vmap"  # the speed-ups are over this one


def train_py_args(config: str, first_order: str, meta_batch: str, steps: int, warmup: int) -> list[str]:
    return timing.timed_run_args(config, steps, warmup, 25, "/tmp/lightning_meta_throughput") + [
        "--model.first_order", first_order, "--model.meta_batch", meta_batch]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--shape", default="5w1s", choices=list(CONFIGS))
    args = parser.parse_args()
    variants = [REFERENCE, *(name for name in args.variants if name != REFERENCE)]
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name in variants:
            algorithm, first_order, meta_batch = VARIANTS[name]
            cli.main(train_py_args(CONFIGS[args.shape][algorithm], first_order, meta_batch, args.steps, args.warmup))
            rates[name].append(timing.RATES[-1])
    medians = {name: statistics.median(r) for name, r in rates.items()}
    speed_ups = {name: statistics.median(a / b for a, b in zip(r, rates[REFERENCE])) for name, r in rates.items()}
    data = yaml.safe_load((ROOT / "configs" / CONFIGS[args.shape]["maml"]).read_text())["data"]["init_args"]
    tasks = data["tasks_per_batch"]
    for name, rate in medians.items():
        print(f"{name}: {rate:.2f} meta-iterations/s ({tasks * rate:.1f} tasks/s), {speed_ups[name]:.2f}x {REFERENCE}")
    timed = (args.steps, args.warmup)
    record({
        "kind": "throughput", "algorithm": "maml", "dataset": "omniglot", "split": "vinyals", "ways": data["n_way"],
        "shots": data["k_shot"], "within_alphabet": False, "queries": data["n_query"],
        "unit": f"meta-iterations ({tasks} tasks)", "rates": medians,
        "speed_ups": speed_ups, "speed_up_over": REFERENCE,
        "hardware": hardware(), "date": today(), "command": this_command(),
        "note": f"Medians of {args.repeats} alternating runs of {args.steps} timed steps each, through "
                f"`python train.py {' '.join(train_py_args('CONFIG', 'FIRST_ORDER', 'META_BATCH', *timed))}` (CONFIG "
                f"{', '.join(CONFIGS[args.shape].values())}).",
    })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
