"""What distributed training and bfloat16 cost or save on this CPU, for every algorithm's Omniglot 5-way 1-shot
config, through train.py with the same total meta-batch of 2T tasks (T = the config's tasks per step):

- one process with 2T tasks per step, fp32;
- DDP with 2 processes (gloo) and T tasks each, fp32: the overhead of the split;
- one process with 2T tasks, ``trainer.precision: bf16-mixed``: its speed, and its test accuracy after the same
  short training beside fp32's (same seed, same episodes), to show that bf16 learns as well.

Each run trains ``warmup + steps`` steps (the first ``warmup`` not timed), without validation, and tests the
final weights on ``--test_episodes`` episodes of the test split.

    python benchmarks/ddp_bf16.py                      # every algorithm
    python benchmarks/ddp_bf16.py --configs proto.yaml maml.yaml

Run it on an otherwise idle machine. Reads Omniglot from $LIGHTNING_META_DATA/omniglot.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

from results import (
    ROOT,
    command_line,
    hardware,
    parse_test_metrics,
    record,
    tasks_per_batch,
    this_command,
    today,
    train_py,
)

CONFIGS = {  # config: the algorithm's name in RESULTS.md, timed steps (about 15 s of fp32 training on the 2-core VM;
    # bfloat16 takes several times as long on a CPU without native bfloat16 arithmetic)
    "proto.yaml": ("protonet", 30), "matching.yaml": ("matching", 150), "relation.yaml": ("relation", 150),
    "siamese.yaml": ("siamese", 100), "maml.yaml": ("maml", 15), "fomaml.yaml": ("fomaml", 20),
    "reptile.yaml": ("reptile", 60), "mann.yaml": ("mann", 30), "metanet.yaml": ("metanet", 10),
    "meta_lstm.yaml": ("meta_lstm", 10),
}  # fmt: skip
RUNS = {
    "1 process, fp32": [],
    "DDP, 2 processes, fp32": ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
    "1 process, bf16-mixed": ["--trainer.precision", "bf16-mixed"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--test_episodes", type=int, default=200)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="lightning_meta_ddp_bf16_"))
    for config in args.configs:
        (label, steps), T = CONFIGS[config], tasks_per_batch(config)
        rates, accuracy, commands = {}, {}, {}
        for name, settings in RUNS.items():
            per_rank = T if "DDP" in name else 2 * T
            command = ["--config", config, "--trainer.max_steps", str(args.warmup + steps),
                       "--data.batches_per_epoch", str(args.warmup + steps), "--trainer.limit_val_batches", "0",
                       "--data.tasks_per_batch", str(per_rank), "--data.test_episodes", str(args.test_episodes),
                       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                       "--checkpoint_every", "100000", "--log_root", str(folder / "logs"),
                       "--trainer.callbacks+=timing.StepTimer", "--trainer.callbacks.warmup", str(args.warmup),
                       *settings]  # fmt: skip
            out = train_py(*command, log=folder / "train.log")
            rates[name] = float(re.search(r"^timed: ([\d.]+) training steps per second$", out, re.M)[1])
            accuracy[name] = parse_test_metrics(out)["acc"]
            commands[name] = command_line(["train.py", *command])
            print(f"{config} {name}: {rates[name]:.3f} steps/s, test/acc {accuracy[name][0]:.2f} ± "
                  f"{accuracy[name][1]:.2f}", flush=True)
        record({
            "kind": "ddp_bf16", "algorithm": label, "dataset": "omniglot",
            "split": "vinyals", "ways": 5, "shots": 1, "within_alphabet": False, "config": config,
            "meta_batch": 2 * T, "steps": steps, "warmup": args.warmup, "test_episodes": args.test_episodes,
            "rates": rates, "accuracy": accuracy, "hardware": hardware(), "date": today(),
            "command": this_command(),
            "note": "Runs: " + "; ".join(f"{name}: `{command}`" for name, command in commands.items()) + ".",
        })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
