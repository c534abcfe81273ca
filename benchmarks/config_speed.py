"""Training steps per second of configs through train.py under two or more variants, side by side.

A variant is a name and what differs: train.py settings, environment variables (``NAME=VALUE``) and, to compare
two checkouts, the source tree that runs (``tree=DIR``, default this one). For each config the variants take turns
``repeats`` times, each run a fresh process of ``warmup + steps`` training steps (the first ``warmup`` not timed,
benchmarks/timing.py), so drift in the machine's speed hits all alike; the medians are recorded.

    # the meta-batch as a loop over tasks or vectorised (MAML's meta_batch)
    python benchmarks/config_speed.py --configs maml.yaml fomaml.yaml --variants "vmap: --model.meta_batch vmap" \\
        "loop: --model.meta_batch loop"
    # the speed-ups against the plain computations they replace (lightning_meta/speedups.py)
    python benchmarks/config_speed.py --configs proto.yaml metanet.yaml --variants "speed-ups:" \\
        "plain: LIGHTNING_META_SPEEDUPS=0"
    # two checkouts, e.g. before and after a change (git worktree add /tmp/before <commit>)
    python benchmarks/config_speed.py --configs proto.yaml --variants "before: tree=/tmp/before" "after:"

Run it on an otherwise idle machine: figures from a shared CPU are not comparable.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import timing
import yaml
from results import ROOT, commit, hardware, record, this_command, today

BENCHMARKS = Path(__file__).resolve().parent


def parse_variant(text: str) -> tuple[str, dict]:
    """``"name: tokens"`` -> name, {"tree": Path, "env": {NAME: VALUE}, "args": [train.py settings]}."""
    name, colon, rest = text.partition(":")
    if not colon or not name.strip():
        raise SystemExit(f"a variant is 'name: settings' (got {text!r}), e.g. 'loop: --model.meta_batch loop'")
    variant: dict = {"tree": ROOT, "env": {}, "args": []}
    for token in shlex.split(rest):
        if token.startswith("tree="):
            variant["tree"] = Path(token.removeprefix("tree=")).resolve()
            if not (variant["tree"] / "train.py").is_file():
                raise SystemExit(f"{variant['tree']} has no train.py; give tree= a checkout of lightning_meta")
        elif re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", token):
            key, _, value = token.partition("=")
            variant["env"][key] = value
        else:
            variant["args"].append(token)
    return name.strip(), variant


def steps_per_second(config: str, variant: dict, steps: int, warmup: int) -> float:
    """One timed run of ``config`` under ``variant`` in a fresh process."""
    args = timing.timed_run_args(config, steps, warmup, 10, "/tmp/lightning_meta_config_speed") + variant["args"]
    python_path = os.pathsep.join(filter(None, [str(BENCHMARKS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **variant["env"], "PYTHONPATH": python_path}
    run = subprocess.run([sys.executable, "train.py", *args], cwd=variant["tree"], env=env, capture_output=True,
                         text=True)
    rates = re.findall(r"^timed: ([0-9.]+) training steps per second", run.stdout, re.M)
    if run.returncode != 0 or not rates:
        raise SystemExit(f"{config} ({shlex.join(args)}) failed in {variant['tree']}:\n{run.stderr[-2000:]}")
    return float(rates[-1])


def describe_variant(variant: dict) -> str:
    """A variant's settings as text; another tree by its commit."""
    words = [*(f"{key}={value}" for key, value in variant["env"].items()), *variant["args"]]
    if variant["tree"] != ROOT:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=variant["tree"], capture_output=True, text=True)
        words.append(f"tree at commit {head.stdout.strip()[:12] or 'unknown'}")
    return " ".join(words)


def describe(config: str) -> dict:
    """The algorithm and data set of a config in configs/, for the record."""
    settings = yaml.safe_load((ROOT / "configs" / config).read_text())
    data = settings["data"]
    return {"algorithm": settings["model"]["class_path"].rsplit(".", 1)[1].lower(),
            "dataset": data["class_path"].rsplit(".", 1)[1].removesuffix("DataModule").lower(),
            "ways": data.get("init_args", {}).get("n_way"), "shots": data.get("init_args", {}).get("k_shot")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--variants", nargs="+", required=True, help="'name: settings', two or more")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    variants = dict(parse_variant(v) for v in args.variants)
    if len(variants) < 2:
        raise SystemExit("give two or more variants with different names")
    for config in args.configs:
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, variant in variants.items():
                rates[name].append(steps_per_second(config, variant, args.steps, args.warmup))
        medians = {name: statistics.median(r) for name, r in rates.items()}
        print(config, "  ".join(f"{name}: {rate:.3f}" for name, rate in medians.items()), flush=True)
        record({
            "kind": "config_speed", **describe(config), "config": config, "comparison": " / ".join(variants),
            "variants": {name: describe_variant(variant) for name, variant in variants.items()},
            "rates": medians, "all_rates": rates, "repeats": args.repeats, "steps": args.steps,
            "warmup": args.warmup, "commit": commit(), "hardware": hardware(), "date": today(),
            "command": this_command(),
        })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
