"""Choosing a recipe on validation episodes only (the results protocol, docs/benchmarks.md): trains a config under
each variant of its settings, for a budget of training time, validates each best checkpoint on the config's
validation episodes, and records the validation accuracy (RESULTS.md, "Recipes chosen on validation episodes"). The
test split is never loaded (``train.py --test_after_fit false``).

    python benchmarks/tune.py --config maml.yaml --minutes 60 --variants "as shipped:" \\
        "inner lr 0.2: --model.inner_lr 0.2" "10 queries: --data.n_query 10"

A variant is ``"name: train.py settings"``; other arguments (``--trainer.*``, ``--model.*``, ``--data.*``) go to every
variant. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from results import CPU_SETTINGS, ROOT, command_line, parse_test_metrics, parse_with_settings, record, train_config


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"name: settings"`` -> name, [train.py settings]."""
    name, colon, rest = text.partition(":")
    if not colon or not name.strip():
        raise SystemExit(f"a variant is 'name: settings' (got {text!r}), e.g. 'inner lr 0.2: --model.inner_lr 0.2'")
    return name.strip(), shlex.split(rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--variants", nargs="+", default=["as shipped:"], help="'name: train.py settings' each")
    parser.add_argument("--minutes", type=float, help="training time of each variant (default: the config's steps)")
    parser.add_argument("--seed", type=int, default=0, help="the training seed of every variant")
    parser.add_argument("--data", help="another data module (the tests: SyntheticDataModule)")
    parser.add_argument("--log_root", type=Path, default=ROOT / "lightning_logs" / "tune")
    args, given = parse_with_settings(parser)
    given = [*(["--data", args.data] if args.data else []), *given]
    variants = [parse_variant(text) for text in args.variants]  # every variant checked before the first trains
    for name, own in variants:
        settings = [*given, *CPU_SETTINGS.get(args.config, []), *own]
        run = train_config(args.config, str(args.log_root), [*settings, "--test_after_fit", "false",
                                                             "--seed_everything", str(args.seed)], args.minutes)
        metrics = parse_test_metrics(run.output, stage="val")
        metric = "acc" if "acc" in metrics else next(iter(metrics))
        acc, ci95 = metrics[metric]
        print(f"{args.config} {name}: val {metric} {acc:.2f} ± {ci95:.2f}", flush=True)
        record({
            "kind": "tuning", "algorithm": run.algorithm, **run.fields(0.0), "settings": settings, "variant": name,
            "variant_settings": own, "comparison": f"tuning {args.config}", "ways": None, "shots": None,
            "within_alphabet": False, "inner_steps": None, "test_episodes": 0,
            "val_episodes": run.data()["val_episodes"], "metric": metric, "acc": acc, "ci95": ci95,
            "budget": None if args.minutes is None else f"{args.minutes:g} min of training",
            "train_command": command_line(["train.py", *run.train_args]),
        })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
