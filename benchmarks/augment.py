"""Augmentation cost of a config's training transforms, torchvision's v2 transforms image by image against the
batched transforms of ``lightning_meta.data.augment`` (same functions, parameters drawn per image, one call per
episode):

- episodes per second of augmentation alone: the episode sampler with each transform, as the DataLoader runs it;
- training steps per second of the config through train.py with each (the first ``warmup`` not timed).

    python benchmarks/augment.py                          # proto_cifar_fs.yaml: random crop, flip, colour jitter
    python benchmarks/augment.py --config siamese.yaml    # Omniglot: random affine distortions

Run it on an otherwise idle machine. Reads the config's data set from $LIGHTNING_META_DATA (CIFAR-FS from the
shared class-folder copy of CIFAR-100).
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
from lightning_meta import cli  # noqa: E402
from lightning_meta.data import EpisodicDataModule  # noqa: E402

VARIANTS = {"torchvision v2, image by image": "torchvision.transforms.v2",
            "lightning_meta.data.augment, batched": "lightning_meta.data.augment"}


def config_with(path: Path, module: str) -> dict:
    """The config at ``path`` with its training transforms (one, or those of a Compose) taken from ``module``."""
    config = yaml.safe_load(path.read_text())
    transform = config["data"]["init_args"]["train_transform"]
    composed = transform["class_path"].endswith(".Compose")
    for step in transform["init_args"]["transforms"] if composed else [transform]:
        step["class_path"] = f"{module}.{step['class_path'].rsplit('.', 1)[1]}"
    return config


def data_module(config: dict) -> EpisodicDataModule:
    parser = ArgumentParser()
    parser.add_subclass_arguments(EpisodicDataModule, "data")
    return parser.instantiate_classes(parser.parse_object({"data": config["data"]})).data


def sampling_rate(data: EpisodicDataModule, episodes: int) -> float:
    """Training episodes per second of the sampler (selection, augmentation, stacking) alone."""
    data.setup("fit")
    sampler = data.samplers["train"]
    sampler[0]
    start = time.perf_counter()
    for i in range(1, episodes + 1):
        sampler[i]
    return episodes / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="proto_cifar_fs.yaml", help="a config with a data.train_transform")
    parser.add_argument("--episodes", type=int, default=200, help="episodes timed for sampling alone")
    parser.add_argument("--steps", type=int, default=100, help="training steps timed")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="lightning_meta_augment_"))
    sampling, training, commands = {}, {name: [] for name in VARIANTS}, {}
    source = ROOT / "configs" / args.config
    for name, module in VARIANTS.items():
        config = config_with(source, module)
        path = folder / f"{module.rsplit('.', 1)[1]}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        data = data_module(config)
        sampling[name] = sampling_rate(data, args.episodes)
        commands[name] = timing.timed_run_args(str(path), args.steps, args.warmup, 10, str(folder / "logs"))
    for _ in range(args.repeats):
        for name in VARIANTS:
            cli.main(commands[name])
            training[name].append(timing.RATES[-1])
    steps = {name: statistics.median(r) for name, r in training.items()}
    ways, shots, queries = data.shapes["train"]
    channels, height, width = data.image_shape
    dataset, _, split = data.name.partition("/")
    for unit, rates in (("training episodes sampled", sampling), (f"training steps ({args.config})", steps)):
        record({
            "kind": "throughput", "algorithm": f"augmentation: {unit}", "dataset": dataset, "split": split,
            "ways": ways, "shots": shots, "within_alphabet": False, "queries": queries, "unit": unit, "rates": rates,
            "hardware": hardware(), "date": today(), "command": this_command(),
            "note": f"{ways}-way {shots}-shot episodes with {queries} queries per class, {ways * (shots + queries)} "
                    f"{height}x{width} {'RGB' if channels == 3 else 'grey'} images each; sampling: {args.episodes} "
                    f"episodes after one; training: medians of {args.repeats} alternating runs of {args.steps} "
                    f"timed steps after {args.warmup}, through `python train.py` with {args.config}, its "
                    "transforms taken from each module.",
        })  # fmt: skip
        print(unit, {name: f"{rate:.2f}/s" for name, rate in rates.items()})


if __name__ == "__main__":
    os.environ.setdefault("LIGHTNING_META_DATA", str(ROOT.parent / "shared" / "data"))
    main()
