"""The GPU check, one prepared script for a machine with CUDA: every algorithm's Omniglot config for a few hundred
steps in float32, ``bf16-mixed`` and ``16-mixed``; then each under DDP over all the GPUs present; then the papers'
full recipes (ProtoNet, MAML, ANIL, Meta-SGD, MAML++) and ResNet-12 on CIFAR-FS (ProtoNet, Baseline++, SimpleShot,
R2D2), each within a stated time. Every run writes a record (kind ``gpu_check``) with the
steps per second, the test accuracy and everything the results protocol asks of a trained model.

    python benchmarks/gpu_check.py                                   # all three parts, on CUDA
    python benchmarks/gpu_check.py --parts precision ddp --steps 200  # a shorter check
    python benchmarks/gpu_check.py --parts recipes --recipe_minutes 120
    python benchmarks/gpu_check.py --parts recipes --recipes maml_plus_plus.yaml r2d2_cifar_fs.yaml
    python benchmarks/gpu_check.py --dry_run                         # the same commands on the CPU, tiny (CI runs it)

``--dry_run`` runs every command on the CPU for a couple of steps on SyntheticDataModule (so without data), DDP
over 2 CPU processes (gloo); Lightning runs ``16-mixed`` as ``bf16-mixed`` on the CPU. Its records go to
``<log_root>/records``, never to benchmarks/results.json. Without ``--dry_run`` the script refuses to start where
CUDA is not available. It reads Omniglot and CIFAR-100 from $LIGHTNING_META_DATA.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import results
import torch
import yaml
from results import ROOT, command_line, parse_with_settings, record, timed, train_config

CONFIGS = ["proto.yaml", "matching.yaml", "matching_fce.yaml", "relation.yaml", "siamese.yaml", "maml.yaml",
           "fomaml.yaml", "reptile.yaml", "mann.yaml", "metanet.yaml", "meta_lstm.yaml", "anil.yaml", "metasgd.yaml",
           "maml_plus_plus.yaml", "r2d2.yaml", "baseline.yaml", "baseline_pp.yaml", "simpleshot.yaml"]
PRECISIONS = ["32-true", "bf16-mixed", "16-mixed"]
MAML_RECIPE = ["--trainer.max_steps", "60000", "--data.n_query", "1", "--model.lr_final", "null"]
RESNET12 = ["--model.backbone", "resnet12"]  # MetaOptNet's and TADAM's ResNet-12, 640-d embeddings
RECIPES = {  # the papers' full training (the configs' headers: "Full recipe"), and ResNet-12 on CIFAR-FS
    "proto.yaml": ["--trainer.max_steps", "40000"],
    "maml.yaml": MAML_RECIPE,
    "anil.yaml": MAML_RECIPE,
    "metasgd.yaml": MAML_RECIPE,
    "maml_plus_plus.yaml": ["--trainer.max_steps", "75000", "--data.batches_per_epoch", "500",
                            "--model.multi_step_loss_epochs", "20", "--model.first_order_epochs", "50"],
    "proto_cifar_fs.yaml": RESNET12,
    "baseline_pp_cifar_fs.yaml": RESNET12,
    "simpleshot_cifar_fs.yaml": RESNET12,
    "r2d2_cifar_fs.yaml": RESNET12,
}
PARTS = ["precision", "ddp", "recipes"]


def short_run(config: str, steps: int, test_episodes: int, dry_run: bool) -> list[str]:
    """train.py settings of a short timed run: ``steps`` steps in one epoch, validated once, a short test (a dry
    run: on synthetic images of the config's channels, 32x32 colour where it normalises three, on the CPU)."""
    data = yaml.safe_load((ROOT / "configs" / config).read_text())["data"].get("init_args", {})
    colour = ["--data.shape", "[3, 32, 32]"] if len(data.get("mean", [])) == 3 else []
    tiny = ["--data", "SyntheticDataModule", *colour, "--data.tasks_per_batch", "2", "--data.eval_tasks_per_batch",
            "2", "--trainer.accelerator", "cpu"] if dry_run else []
    return [*tiny, "--trainer.max_steps", str(steps), "--data.batches_per_epoch", str(steps),
            "--data.val_episodes", str(test_episodes), "--data.test_episodes", str(test_episodes),
            "--trainer.callbacks+=timing.StepTimer", "--trainer.callbacks.warmup", str(min(20, steps // 2))]


def check(part: str, config: str, settings: list[str], log_root: Path, budget: float | None, note: str) -> None:
    """Trains and tests ``config`` with ``settings`` and records it."""
    run = train_config(config, str(log_root / part), settings, budget)
    metrics, _, test_minutes = run.test_all()
    metric = "acc" if "acc" in metrics else next(iter(metrics))
    acc, ci95 = metrics[metric]
    rate = timed(run.output, "training steps per second")
    print(f"{part} {config} {' '.join(settings)}: {rate and f'{rate:.2f}'} steps/s, {metric} {acc:.2f} ± {ci95:.2f}",
          flush=True)
    record({
        "kind": "gpu_check", "algorithm": run.algorithm, **run.fields(test_minutes), "part": part,
        "comparison": f"{part}: {' '.join(settings)}", "ways": None, "shots": None, "within_alphabet": False,
        "inner_steps": None, "test_episodes": run.data()["test_episodes"], "metric": metric, "acc": acc, "ci95": ci95,
        "training_steps_per_second": rate, "budget": None if budget is None else f"{budget:g} min of training",
        "train_command": command_line(["train.py", *run.train_args]), "note": note,
    })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS)
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=300, help="training steps of each precision and DDP run")
    parser.add_argument("--test_episodes", type=int, default=200, help="test episodes of each short run")
    parser.add_argument("--recipe_minutes", type=float, default=60.0, help="training time of each full recipe")
    parser.add_argument("--dry_run", action="store_true", help="every command on the CPU, tiny, records aside")
    parser.add_argument("--log_root", type=Path, default=ROOT / "lightning_logs" / "gpu_check")
    args, given = parse_with_settings(parser)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("CUDA is not available here; run it on a GPU machine, or with --dry_run on the CPU")
    if args.dry_run:  # records aside: a dry run measures nothing
        folder = args.log_root / "records"
        folder.mkdir(parents=True, exist_ok=True)
        results.JSON, results.MARKDOWN = folder / "results.json", folder / "RESULTS.md"
        results.README = folder / "README.md"  # absent: record() leaves it
        steps, test_episodes, recipe_minutes = 2, 4, 1.0  # a budget the two steps end first, on any machine
    else:
        steps, test_episodes, recipe_minutes = args.steps, args.test_episodes, args.recipe_minutes
    gpus = torch.cuda.device_count()
    if "precision" in args.parts:
        for config in args.configs:
            for precision in PRECISIONS:
                check("precision", config, [*given, *short_run(config, steps, test_episodes, args.dry_run),
                                            "--trainer.precision", precision], args.log_root, None,
                      f"{steps} steps in {precision}, one device")
    if "ddp" in args.parts:
        devices = ["--trainer.devices", "2"] if args.dry_run else ["--trainer.devices", str(gpus)]
        for config in args.configs:
            check("ddp", config, [*given, *short_run(config, steps, test_episodes, args.dry_run), *devices,
                                  "--trainer.strategy", "ddp"], args.log_root, None,
                  f"{steps} steps under DDP over {devices[1]} {'CPU processes' if args.dry_run else 'GPUs'}, each "
                  "rank with the config's tasks per step")
    if "recipes" in args.parts:
        for config in args.recipes:
            recipe = RECIPES[config]
            short = short_run(config, steps, test_episodes, True) if args.dry_run else \
                ["--trainer.callbacks+=timing.StepTimer"]
            check("recipes", config, [*given, *recipe, *short], args.log_root, recipe_minutes,
                  f"the full recipe ({' '.join(recipe)}), at most {recipe_minutes:g} min of training")


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
