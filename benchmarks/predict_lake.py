"""Lake's one-shot task as a user does it: a ProtoNet trained with proto_lake.yaml classifies new characters.

For each evaluation alphabet of Omniglot (Lake et al. 2015, none seen in training), 20 of its characters (all
where it has no more) make one task: a support folder of one drawing of each character, by one drawer, and 20 query
drawings of the same characters by another drawer, written as PNG files as the data set has them (dark strokes on
white). ``train.py predict`` classifies the queries with the documented command; the record counts the queries it
gives the right character, per alphabet and in all.

    python benchmarks/predict_lake.py                      # trains proto_lake.yaml first (its closing test too)
    python benchmarks/predict_lake.py --checkpoint BEST    # a checkpoint of a proto_lake.yaml run
    python benchmarks/predict_lake.py --checkpoint BEST --tasks_dir lake_tasks   # keep the folders to look at
"""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath

import results
import torch

sys.path.insert(0, str(results.ROOT))
from lightning_meta.data.datamodule import default_data_root  # noqa: E402

DRAWERS = 20  # drawings of each character, one by each of 20 people


def write_task(archive: zipfile.ZipFile, alphabet: str, folder: Path, rng: random.Random) -> dict[str, str]:
    """The support and query folders of one alphabet's task under ``folder``; returns query file -> character."""
    files = [PurePosixPath(n) for n in archive.namelist() if n.endswith(".png")]
    characters = sorted({f.parent.name for f in files if f.parent.parent.name == alphabet})
    chosen = sorted(rng.sample(characters, 20)) if len(characters) > 20 else characters
    support_drawer, query_drawer = rng.sample(range(1, DRAWERS + 1), 2)
    truth = {}
    for character in chosen:
        drawings = sorted(f for f in files if f.parent.name == character and f.parent.parent.name == alphabet)
        support, query = drawings[support_drawer - 1], drawings[query_drawer - 1]
        (folder / "support" / character).mkdir(parents=True)
        (folder / "support" / character / support.name).write_bytes(archive.read(str(support)))
        (folder / "query").mkdir(exist_ok=True)
        (folder / "query" / query.name).write_bytes(archive.read(str(query)))
        truth[str(folder / "query" / query.name)] = character
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a proto_lake.yaml checkpoint (default: train one)")
    parser.add_argument("--log_root", default="lightning_logs/benchmarks")
    parser.add_argument("--seed", type=int, default=0, help="draws the characters and the two drawers")
    parser.add_argument("--note", default="", help="where a --checkpoint came from (the record's note)")
    parser.add_argument("--tasks_dir", help="keep each alphabet's support and query folders here (a new folder)")
    args = parser.parse_args()
    zip_path = default_data_root() / "omniglot" / "images_evaluation.zip"
    if not zip_path.is_file():
        raise SystemExit(f"{zip_path} not found; set LIGHTNING_META_DATA to a folder holding omniglot/")
    trained = None
    if args.checkpoint is None:
        trained = results.train_config("proto_lake.yaml", args.log_root)
        checkpoint = str(trained.best)
    else:
        checkpoint = args.checkpoint
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    rng = random.Random(args.seed)
    per_alphabet = {}
    start = time.perf_counter()
    if args.tasks_dir is not None and Path(args.tasks_dir).exists():
        raise SystemExit(f"--tasks_dir {args.tasks_dir} exists already; name a new folder")
    with zipfile.ZipFile(zip_path) as archive, tempfile.TemporaryDirectory() as tmp:
        tmp = args.tasks_dir or tmp
        alphabets = sorted({PurePosixPath(n).parts[1] for n in archive.namelist() if n.endswith(".png")})
        for alphabet in alphabets:
            folder = Path(tmp, alphabet)
            truth = write_task(archive, alphabet, folder, rng)
            output = folder / "predictions.csv"
            command = [sys.executable, str(results.ROOT / "train.py"), "predict", "--ckpt_path", checkpoint,
                       "--support", str(folder / "support"), "--query", str(folder / "query"), "--output",
                       str(output)]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            rows = list(csv.DictReader(output.open()))
            correct = sum(truth[row["query"]] == row["predicted"] for row in rows)
            per_alphabet[alphabet] = [correct, len(rows)]
            print(f"{alphabet:<40} {correct:2d} / {len(rows)}", flush=True)
    correct, total = (sum(v[i] for v in per_alphabet.values()) for i in (0, 1))
    if trained is not None:
        trained_by = f"trained by `{results.command_line(['train.py', *trained.train_args])}` in {trained.minutes:.1f} min"
    print(f"all {len(alphabets)} alphabets: {correct} / {total} = {100 * correct / total:.1f}%")
    results.record({
        "kind": "predict", "algorithm": stored["lightning_meta"]["algorithm"], "dataset": "omniglot",
        "split": "lake evaluation alphabets", "ways": 20, "shots": 1, "within_alphabet": True,
        "correct": correct, "queries": total, "per_alphabet": per_alphabet, "seed": args.seed,
        "checkpoint": Path(checkpoint).name, "global_step": stored["global_step"],
        "train_minutes": None if trained is None else round(trained.minutes, 1),
        "predict_minutes": round((time.perf_counter() - start) / 60, 2), "commit": results.commit(),
        "note": args.note if trained is None else trained_by,
        "command": results.this_command(), "hardware": results.hardware(), "date": results.today(),
    })  # fmt: skip


if __name__ == "__main__":
    main()
