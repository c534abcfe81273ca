"""The headline figures: each algorithm's Omniglot 5-way 1-shot target run (the config behind its target), over
training seeds, under the results protocol (docs/benchmarks.md).

    python benchmarks/headline.py                              # every algorithm, the seeds each needs
    python benchmarks/headline.py --algorithms protonet relation
    python benchmarks/headline.py --algorithms maml --seeds 3 4

Each seed trains the config with ``seed_everything`` set to it, for at most the target's budget of training time
(validation apart), and tests its best checkpoint twice: on the config's 1,000 test episodes (evaluation seed 0,
train.py's closing test) and on 1,000 fresh test episodes of the same test classes (evaluation seed 1). A target
needs two seeds, or three where the first seed's interval includes the target; RESULTS.md shows each seed, the mean
and spread over seeds, and whether the mean meets the target. Resumable: a seed already recorded at this commit on
this machine is skipped (``--rerun`` trains it again; the new record supersedes the old one).

Other arguments (``--trainer.*``, ``--model.*``, ``--data.*``) go to train.py with every config. Run it on an
otherwise idle machine; it reads Omniglot from $LIGHTNING_META_DATA/omniglot.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from results import (
    CPU_SETTINGS,
    ROOT,
    command_line,
    measured_here,
    parse_with_settings,
    record,
    seeds_needed,
    train_config,
)

TARGETS = {  # algorithm: its 5-way 1-shot config, target (% on the metric; None: none set), training minutes, metric
    "protonet": ("proto.yaml", 98.0, 30, "acc"),
    "relation": ("relation.yaml", 98.5, 30, "acc"),
    "matching": ("matching.yaml", 97.0, 30, "acc"),
    "matching_fce": ("matching_fce.yaml", 97.0, 30, "acc"),
    "siamese": ("siamese.yaml", 96.0, 30, "acc"),
    "maml": ("maml.yaml", 96.5, 60, "acc"),
    "fomaml": ("fomaml.yaml", 95.5, 60, "acc"),
    "reptile": ("reptile.yaml", 95.0, 60, "acc"),
    "metanet": ("metanet.yaml", 97.0, 60, "acc"),
    "meta_lstm": ("meta_lstm.yaml", 95.0, 60, "acc"),
    "mann": ("mann.yaml", None, 60, "acc_instance_2"),  # by instance: the 2nd is one labelled example of the class
}
FRESH_EVAL_SEED = 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, help="these training seeds (default: those the target needs)")
    parser.add_argument("--test_episodes", type=int, default=1000)
    parser.add_argument("--minutes", type=float, help="another training budget for every config (the tests)")
    parser.add_argument("--data", help="another data module for every config (the tests: SyntheticDataModule)")
    parser.add_argument("--rerun", action="store_true", help="train seeds already recorded here again")
    parser.add_argument("--log_root", default=str(ROOT / "lightning_logs" / "headline"))
    args, given = parse_with_settings(parser)
    given = [*(["--data", args.data] if args.data else []), *given]
    for algorithm in args.algorithms:
        config, target, minutes, metric = TARGETS[algorithm]
        minutes = args.minutes or minutes
        budget = f"{minutes:g} min of training"
        settings = [*given, *CPU_SETTINGS.get(config, []), "--data.test_episodes", str(args.test_episodes)]
        trained: set[int] = set()
        while True:
            done = {r["train_seed"]: r for r in measured_here(kind="headline", algorithm=algorithm, config=config,
                                                               settings=settings, budget=budget)}
            wanted = args.seeds if args.seeds is not None else range(seeds_needed(done[0], target) if 0 in done else 2)
            todo = [s for s in wanted if s not in trained and (args.rerun or s not in done)]
            if not todo:
                break
            seed = todo[0]
            trained.add(seed)
            seeded = [*settings, "--seed_everything", str(seed)]
            run = train_config(config, str(Path(args.log_root) / algorithm), seeded, minutes)
            first, _, first_minutes = run.test_all()
            fresh, _, fresh_minutes = run.test_all("--data.eval_seed", str(FRESH_EVAL_SEED))
            (acc, ci95), (fresh_acc, fresh_ci95) = first[metric], fresh[metric]
            print(f"{algorithm} seed {seed}: {acc:.2f} ± {ci95:.2f}, fresh episodes "
                  f"{fresh_acc:.2f} ± {fresh_ci95:.2f}", flush=True)
            record({
                "kind": "headline", "algorithm": algorithm, **run.fields(first_minutes + fresh_minutes),
                "settings": settings, "ways": 5, "shots": 1, "within_alphabet": False, "inner_steps": None,
                "test_episodes": args.test_episodes, "metric": metric, "acc": acc, "ci95": ci95,
                "fresh": {"eval_seed": FRESH_EVAL_SEED, "acc": fresh_acc, "ci95": fresh_ci95},
                "target": target, "target_minutes": TARGETS[algorithm][2], "budget": budget, "budget_minutes": minutes,
                "train_command": command_line(["train.py", *run.train_args]),
            })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
