"""Augmentation cost on CIFAR-FS, torchvision's v2 transforms image by image against the batched transforms of
``lightning_meta.data.augment`` (same functions, parameters drawn per image, one call per episode):

- episodes per second of augmentation alone: the episode sampler with each transform (random crop after 4-pixel
  padding, horizontal flip, colour jitter of brightness, contrast and saturation 0.4), as the DataLoader runs it;
- training steps per second of proto_cifar_fs.yaml through train.py with each (the first ``warmup`` not timed).

    python benchmarks/augment.py

Run it on an otherwise idle machine. Reads CIFAR-100 from $LIGHTNING_META_DATA/cifar100 (the shared copy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timing
import yaml
from jsonargparse import ArgumentParser
from results import ROOT, hardware, record, this_command, today

sys.path.insert(0, str(ROOT))
import train  # noqa: E402
from lightning_meta.data import CIFARFewShotDataModule  # noqa: E402

CONFIG = ROOT / "configs" / "proto_cifar_fs.yaml"
VARIANTS = {"torchvision v2, image by image": "torchvision.transforms.v2",
            "lightning_meta.data.augment, batched": "lightning_meta.data.augment"}


def config_with(module: str) -> dict:
    """proto_cifar_fs.yaml with its crop, flip and jitter taken from ``module``."""
    config = yaml.safe_load(CONFIG.read_text())
    for transform in config["data"]["init_args"]["train_transform"]["init_args"]["transforms"]:
        transform["class_path"] = f"{module}.{transform['class_path'].rsplit('.', 1)[1]}"
    return config


def sampling_rate(config: dict, episodes: int) -> float:
    """Training episodes per second of the sampler (selection, augmentation, stacking) alone."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(CIFARFewShotDataModule, "data")
    data = parser.instantiate_classes(parser.parse_object({"data": config["data"]})).data
    data.setup("fit")
    sampler = data.samplers["train"]
    sampler[0]
    start = time.perf_counter()
    for i in range(1, episodes + 1):
        sampler[i]
    return episodes / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200, help="episodes timed for sampling alone")
    parser.add_argument("--steps", type=int, default=100, help="training steps timed")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="lightning_meta_augment_"))
    sampling, training, commands = {}, {name: [] for name in VARIANTS}, {}
    for name, module in VARIANTS.items():
        config = folder / f"{module.rsplit('.', 1)[1]}.yaml"
        config.write_text(yaml.safe_dump(config_with(module), sort_keys=False))
        sampling[name] = sampling_rate(config_with(module), args.episodes)
        commands[name] = timing.timed_run_args(str(config), args.steps, args.warmup, 10, str(folder / "logs"))
    for _ in range(args.repeats):
        for name in VARIANTS:
            train.main(commands[name])
            training[name].append(timing.RATES[-1])
    steps = {name: statistics.median(r) for name, r in training.items()}
    episode = yaml.safe_load(CONFIG.read_text())["data"]["init_args"]
    ways, shots, queries = episode["n_way"], episode["k_shot"], episode["n_query"]
    for unit, rates in (("training episodes sampled", sampling), ("training steps (proto_cifar_fs.yaml)", steps)):
        record({
            "kind": "throughput", "algorithm": f"augmentation: {unit}", "dataset": "cifar_fs", "split": "bertinetto",
            "ways": ways, "shots": shots, "within_alphabet": False, "queries": queries, "unit": unit, "rates": rates,
            "hardware": hardware(), "date": today(), "command": this_command(),
            "note": f"{ways}-way {shots}-shot episodes with {queries} queries per class, {ways * (shots + queries)} "
                    f"32x32 RGB images each; sampling: {args.episodes} episodes after one; training: medians of "
                    f"{args.repeats} alternating runs of {args.steps} timed steps after {args.warmup}, through "
                    f"`python train.py` with proto_cifar_fs.yaml, its transforms taken from each module.",
        })  # fmt: skip
        print(unit, {name: f"{rate:.2f}/s" for name, rate in rates.items()})


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
