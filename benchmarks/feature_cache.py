"""The feature cache (``model.cache_features``): the test of a frozen backbone on 1,000 CIFAR-FS episodes with
and without it, side by side in one process on the same machine.

ProtoNet with a frozen ``torchvision:resnet18`` (its weights from a file this script saves: the timing does not
depend on their values, and this machine has no internet) is tested through train.py (``--test_only``, no
checkpoint) on the test split's 1,000 episodes, 5-way with 15 queries per class, 1-shot and 5-shot. The two settings
alternate ``repeats`` times; the medians of the test loop's seconds (``timing.TestTimer``: first batch to end) are
reported with their ratio, and both settings' accuracy on the same episodes (equal up to float rounding).

    python benchmarks/feature_cache.py

Run it on an otherwise idle machine; it reads CIFAR-100 from $LIGHTNING_META_DATA/cifar100.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import timing
import torch
from results import ROOT, hardware, record, this_command, today

sys.path.insert(0, str(ROOT))
from lightning_meta import cli  # noqa: E402

BACKBONE = "resnet18"


def test_args(weights: Path, shots: int, cache: bool, episodes: int) -> list[str]:
    return ["--config", "proto_cifar_fs.yaml", "--model.backbone", f"torchvision:{BACKBONE}", "--model.pretrained",
            str(weights), "--model.freeze_backbone", "true", "--model.cache_features", str(cache).lower(),
            "--test_only", "true", "--data.eval_k_shot", str(shots), "--data.test_episodes", str(episodes),
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=timing.TestTimer"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    import torchvision

    weights = Path(tempfile.mkdtemp()) / f"{BACKBONE}.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(BACKBONE).state_dict(), weights)
    for shots in args.shots:
        seconds: dict[str, list[float]] = {"f_θ on every episode": [], "feature cache": []}
        accuracy: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeats):
            for name, cache in (("f_θ on every episode", False), ("feature cache", True)):
                metrics = cli.main(test_args(weights, shots, cache, args.episodes))
                seconds[name].append(timing.TEST_SECONDS[-1])
                accuracy[name] = (metrics["test/acc"], metrics["test/acc_ci95"])
        medians = {name: statistics.median(s) for name, s in seconds.items()}
        speed_up = medians["f_θ on every episode"] / medians["feature cache"]
        print(f"5-way {shots}-shot: {medians} s, {speed_up:.2f}x; accuracy {accuracy}", flush=True)
        record({
            "kind": "feature_cache", "algorithm": "protonet", "dataset": "cifar_fs", "split": "test", "ways": 5,
            "shots": shots, "queries": 15, "within_alphabet": False, "backbone": f"torchvision:{BACKBONE}",
            "test_episodes": args.episodes, "seconds": medians, "speed_up": speed_up, "accuracy": accuracy,
            "repeats": args.repeats, "hardware": hardware(), "date": today(), "command": this_command(),
            "note": f"Medians of {args.repeats} alternating tests through `python train.py "
                    f"{' '.join(test_args(Path('WEIGHTS'), shots, False, args.episodes))}` and the same with "
                    f"`--model.cache_features true`.",
        })  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
