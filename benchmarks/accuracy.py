"""Few-shot accuracy on the data set of a config (Omniglot, CIFAR-FS, FC100, miniImageNet, ...): train with the
config, then test the best checkpoint on 1,000 fixed test episodes of each requested shape, and record the results.

    python benchmarks/accuracy.py                                            # proto.yaml; 5w1s 5w5s 20w1s 20w5s
    python benchmarks/accuracy.py --config proto_5shot.yaml --shapes 5w5s 20w5s
    python benchmarks/accuracy.py --config maml.yaml --shapes 5w1s 5w5s
    python benchmarks/accuracy.py --config fomaml.yaml --label fomaml --shapes 5w1s 5w5s
    python benchmarks/accuracy.py --config siamese_lake.yaml --shapes 20w1s   # lake split, within alphabet
    python benchmarks/accuracy.py --config proto_cifar_fs.yaml --shapes 5w1s 5w5s  # CIFAR-FS
    python benchmarks/accuracy.py --run lightning_logs/benchmarks/maml/version_0 --eval_inner_steps 10
    python benchmarks/accuracy.py --config metanet.yaml --shapes 5w1s --trainer.precision bf16-mixed

Other arguments (``--trainer.*``, ``--model.*``, ``--data.*``) go to train.py with the config, for training and
testing.

Run it on an otherwise idle machine. The training command and each test command are recorded with the
figures (RESULTS.md, benchmarks/results.json).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from results import ROOT, TrainedRun, parse_with_settings, record, train_config

SHAPES = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="proto.yaml")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--test_episodes", type=int, default=1000)
    parser.add_argument("--log_root", default=str(ROOT / "lightning_logs" / "benchmarks"))
    parser.add_argument("--label", help="the algorithm's name in RESULTS.md (default: the checkpoint's algorithm)")
    parser.add_argument("--run", type=Path, help="test this earlier benchmark run folder instead of training")
    parser.add_argument("--eval_inner_steps", type=int, nargs="+", default=[None],
                        help="inner steps at test time (MAML, Reptile; default: the config's)")
    parser.add_argument("--budget", type=float, help="minutes of training time at most (validation apart)")
    args, overrides = parse_with_settings(parser)
    if overrides and args.run:
        parser.error(f"{' '.join(overrides)}: settings for train.py apply when training, not with --run")
    if args.run:
        run = TrainedRun.load(args.run)
    else:
        run = train_config(args.config, args.log_root, overrides, args.budget)
    data = run.data()
    for shape in args.shapes:
        ways, shots = SHAPES[shape]
        for steps in args.eval_inner_steps:
            overrides = [] if steps is None else ["--model.eval_inner_steps", str(steps)]
            acc, ci95, note, test_minutes = run.test("--data.eval_n_way", str(ways), "--data.eval_k_shot", str(shots),
                                                     "--data.test_episodes", str(args.test_episodes), *overrides)
            print(f"{shape}{'' if steps is None else f', {steps} inner steps'}: {acc:.2f} ± {ci95:.2f}")
            record({
                "kind": "accuracy", "algorithm": args.label or run.algorithm, **run.fields(test_minutes),
                "ways": ways, "shots": shots, "within_alphabet": bool(data.get("within_alphabet")),
                "inner_steps": steps, "test_episodes": args.test_episodes, "acc": acc, "ci95": ci95,
                "budget": None if args.budget is None else f"{args.budget:g} min of training", "note": note,
            })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
