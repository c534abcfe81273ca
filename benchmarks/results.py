"""Benchmark records: ``benchmarks/results.json`` (a list of records) and ``RESULTS.md`` made from it.

The records are append-only (docs/benchmarks.md, "The results protocol"). ``record`` adds records at the end and
never changes or removes one; a new record that measures what a current one measured (the same ``identity``: the
same kind, algorithm, config, shape, budget, settings and seeds) supersedes it, which the new record says in
``supersedes`` (the earlier records' numbers, counted from 1), and RESULTS.md shows which records are current.
``check`` is the schema every record meets; ``record`` refuses to write a list that fails it, and a test runs it on
``results.json``. The first ``LEGACY_RECORDS`` records were written before this protocol, without a commit or seeds;
they are frozen by their digest.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from timing import speed_probe

ROOT = Path(__file__).resolve().parents[1]
OTHER = os.environ.get("LIGHTNING_META_RESULTS")  # a folder for results.json and RESULTS.md (the tests' smoke runs)
JSON = Path(OTHER, "results.json") if OTHER else ROOT / "benchmarks" / "results.json"
MARKDOWN = Path(OTHER, "RESULTS.md") if OTHER else ROOT / "RESULTS.md"
README = Path(OTHER, "README.md") if OTHER else ROOT / "README.md"  # its results section shows the Omniglot table
README_TABLE = ("<!-- the Omniglot table: written by benchmarks/results.py from results.json -->",
                "<!-- end of the Omniglot table -->")
TABLE_SHAPES = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}  # the Omniglot table's columns
TABLE_PARTS = {  # the Omniglot table's parts: per algorithm, the configs benchmarks/table.py trains and the shapes
    # each trained model is tested on; a part is complete once one commit on one machine covers its configs
    "meta-learners": {
        "protonet": [("proto.yaml", ["5w1s", "20w1s"]), ("proto_5shot.yaml", ["5w5s", "20w5s"])],
        "matching": [("matching.yaml", ["5w1s", "20w1s"]), ("matching_5shot.yaml", ["5w5s", "20w5s"])],
        "relation": [("relation.yaml", ["5w1s", "20w1s"]), ("relation_5shot.yaml", ["5w5s", "20w5s"])],
        "siamese": [("siamese.yaml", ["5w1s", "5w5s", "20w1s", "20w5s"])],
        "maml": [("maml.yaml", ["5w1s", "5w5s"]), ("maml_20way.yaml", ["20w1s", "20w5s"])],
        "fomaml": [("fomaml.yaml", ["5w1s", "5w5s"]), ("fomaml_20way.yaml", ["20w1s", "20w5s"])],
        "reptile": [("reptile.yaml", ["5w1s", "5w5s"]), ("reptile_20way.yaml", ["20w1s", "20w5s"])],
        "mann": [("mann.yaml", ["5w1s", "5w5s"])],  # 5 output units: 5-way only
        "metanet": [("metanet.yaml", ["5w1s"]), ("metanet_20way.yaml", ["20w1s"])],
        "meta_lstm": [("meta_lstm.yaml", ["5w1s"]), ("meta_lstm_5shot.yaml", ["5w5s"])],
    },
    "pretrain-and-evaluate baselines": {  # pretrained on labelled batches once, then tested on every shape
        "baseline": [("baseline.yaml", ["5w1s", "5w5s", "20w1s", "20w5s"])],
        "baseline_pp": [("baseline_pp.yaml", ["5w1s", "5w5s", "20w1s", "20w5s"])],
        "simpleshot": [("simpleshot.yaml", ["5w1s", "5w5s", "20w1s", "20w5s"])],
    },
}
TABLE_PLAN = {algorithm: plan for part in TABLE_PARTS.values() for algorithm, plan in part.items()}
CPU_SETTINGS = {  # train.py settings the benchmarks add to a config on the CPU (the configs' headers say why)
    "meta_lstm.yaml": ["--trainer.precision", "bf16-mixed"],
    "meta_lstm_5shot.yaml": ["--trainer.precision", "bf16-mixed"],
}
IDENTITY = ("kind", "algorithm", "dataset", "split", "ways", "shots", "within_alphabet", "inner_steps", "config",
            "comparison", "budget", "settings", "train_seed", "eval_seed")  # what a record measures (see the docstring)

SCHEMAS = (2, 3)  # the records of the results protocol (3: with machine.probe_ms); the legacy ones have no "schema"
SCHEMA = SCHEMAS[-1]
LEGACY_RECORDS = 132
LEGACY_SHA256 = "2f6f34f793d7c490c04479acac64dc56c5c10cc2893cd5e277492c29c92a6434"  # of json.dumps(them, sort_keys)
COMMON_FIELDS = ("schema", "kind", "algorithm", "commit", "machine", "date", "command", "digest")
MACHINE_FIELDS = ("cpu", "isa", "threads", "accelerator", "torch", "python")
PROBE_FIELDS = ("probe_ms",)  # machine fields from schema 3 on: timing.speed_probe
PROBE_RATIO = 1.25  # two probes further apart than this were two machines, whatever their label
RUN_KINDS = ("accuracy", "table", "headline", "instances", "regression", "gpu_check", "tuning")  # trained models
RUN_FIELDS = ("config", "config_sha256", "dataset", "split", "settings", "train_seed", "eval_seed", "precision",
              "batch_norm", "train_shape", "steps", "minutes", "test_episodes")
MINUTES_FIELDS = ("train", "validation", "test")
COMMIT = re.compile(r"^[0-9a-f]{40}(\+dirty)?$")


class RecordError(ValueError):
    """A record, or the list of records, that breaks the protocol: the message names the record and the field."""

PAPER = {  # published test accuracy (%) by (algorithm, dataset, ways, shots); algorithms.md
    ("protonet", "omniglot", 5, 1): 98.8, ("protonet", "omniglot", 5, 5): 99.7,
    ("protonet", "omniglot", 20, 1): 96.0, ("protonet", "omniglot", 20, 5): 98.9,
    ("maml", "omniglot", 5, 1): 98.7, ("maml", "omniglot", 5, 5): 99.9,
    ("maml", "omniglot", 20, 1): 95.8, ("maml", "omniglot", 20, 5): 98.9,
    ("reptile", "omniglot", 5, 1): "97.68 (transductive); 95.39", ("reptile", "omniglot", 5, 5): "99.48; 98.90",
    ("reptile", "omniglot", 20, 1): "89.43; 88.14", ("reptile", "omniglot", 20, 5): "97.12; 96.65",
    ("siamese", "omniglot", 5, 1): 96.7, ("siamese", "omniglot", 5, 5): 98.4,
    ("siamese", "omniglot", 20, 1): 88.0, ("siamese", "omniglot", 20, 5): 96.5,
    ("siamese", "omniglot", 20, 1, "within alphabet"): 92.0,
    ("matching", "omniglot", 5, 1): 98.1, ("matching", "omniglot", 5, 5): 98.9,
    ("matching", "omniglot", 20, 1): 93.8, ("matching", "omniglot", 20, 5): 98.5,
    ("relation", "omniglot", 5, 1): 99.6, ("relation", "omniglot", 5, 5): 99.8,
    ("relation", "omniglot", 20, 1): 97.6, ("relation", "omniglot", 20, 5): 99.1,
    ("metanet", "omniglot", 5, 1): 98.95, ("metanet", "omniglot", 20, 1): 97.00,
    ("protonet", "cifar_fs", 5, 1): 55.5, ("protonet", "cifar_fs", 5, 5): 72.0,  # conv4, Bertinetto et al. 2019
    ("maml", "cifar_fs", 5, 1): 58.9, ("maml", "cifar_fs", 5, 5): 71.5,
}  # fmt: skip


SANTORO = {  # Santoro et al. (2016), Table 1: Omniglot accuracy (%) by instance
    "MANN (LRUA)": {1: 36.4, 2: 82.8, 3: 91.0, 4: 92.6, 5: 94.9, 10: 98.1},
    "LSTM": {1: 24.4, 2: 49.5, 3: 55.3, 4: 61.0, 5: 63.6, 10: 62.5},
}


def machine() -> dict:
    """The machine a record was measured on. ``isa`` is the vector width PyTorch's CPU kernels use: one model name
    ("AMD EPYC") has covered a 2.7x slower AVX2 machine and an AVX512 one here; ``probe_ms`` (``timing.speed_probe``)
    tells apart machines that share both."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    accelerator = f"{len(gpus)} x {gpus[0]}" if gpus else "CPU only"
    return {"cpu": cpu, "isa": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "accelerator": accelerator, "torch": torch.__version__, "python": platform.python_version(),
            "probe_ms": speed_probe()}


def same_speed(a: dict, b: dict) -> bool:
    """Whether two machine entries ran at one speed: their probes within ``PROBE_RATIO`` of each other."""
    slower, faster = max(a["probe_ms"], b["probe_ms"]), min(a["probe_ms"], b["probe_ms"])
    return slower <= PROBE_RATIO * faster


def probes(rows: list[dict]) -> str:
    """The range of the rows' speed probes, for a table's machine line ('' where no row has one)."""
    measured = sorted(r["machine"]["probe_ms"] for r in rows if "probe_ms" in r["machine"])
    if not measured:
        return ""
    span = f"{measured[0]:.1f}" if measured[0] == measured[-1] else f"{measured[0]:.1f} to {measured[-1]:.1f}"
    return f"; speed probe (`timing.speed_probe`) {span} ms per step"


def machine_label(m: dict) -> str:
    return (f"{m['cpu']} ({m['isa']}), {m['threads']} threads, {m['accelerator']}, torch {m['torch']}, "
            f"Python {m['python']}")


def hardware() -> str:
    return machine_label(machine())


def today() -> str:
    return datetime.date.today().isoformat()


def commit() -> str:
    """The commit of the code that ran, with ``+dirty`` when the tracked files differ from it, apart from the files
    that ``record`` itself writes (records written one after another would otherwise all be dirty but the first)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    written = [f":(exclude){path.relative_to(ROOT)}" for path in (JSON, MARKDOWN, README) if path.is_relative_to(ROOT)]
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", *written], cwd=ROOT).returncode != 0
    return (head or "unknown") + ("+dirty" if dirty else "")


def command_line(args: list[str]) -> str:
    return shlex.join(["python", *[str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT)) else a for a in args]])


def this_command() -> str:
    """The benchmark's own command line, with its script path relative to the project, wherever it was run."""
    return command_line([str(Path(sys.argv[0]).resolve()), *sys.argv[1:]])


def parse_with_settings(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[str]]:
    """The script's own arguments, and the rest: train.py settings (``--trainer.*``, ``--model.*``, ``--data.*``)
    that go with the config to every training and test it runs."""
    args, settings = parser.parse_known_args()
    if settings and not settings[0].startswith(("--trainer.", "--model.", "--data.")):
        parser.error(f"unrecognized arguments: {' '.join(settings)}")
    return args, settings


def train_py(*args: str, log: Path) -> str:
    """Runs train.py, teeing its output to ``log``; returns stdout."""
    command = [sys.executable, str(ROOT / "train.py"), *args]
    benchmarks = str(ROOT / "benchmarks")  # its callbacks (timing.StepTimer) can be named in the arguments
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [benchmarks, os.environ.get("PYTHONPATH")]))}
    with log.open("a") as out:
        out.write(f"$ {command_line(command[1:])}\n")
        out.flush()
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=out, text=True)
        out.write(result.stdout)
    if result.returncode != 0:
        raise SystemExit(f"train.py failed, see {log}")
    return result.stdout


def tasks_per_batch(config: str) -> int:
    """The tasks per training step of a config in configs/."""
    data = yaml.safe_load((ROOT / "configs" / config).read_text())["data"]["init_args"]
    return data.get("tasks_per_batch", 1)


def data_settings(run: Path) -> dict:
    """A run folder's data settings: ``data.init_args`` of the config.yaml train.py saved, defaults filled in."""
    return yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]


@dataclass
class TrainedRun:
    """A finished ``train.py`` run of a config: how long it took and its best checkpoint."""

    config: str
    train_args: list[str]
    minutes: float
    steps: int
    algorithm: str
    best: Path
    log: Path
    closing_test: dict[str, tuple[float, float]]  # train.py's own test of the best checkpoint, with the config's shape
    dataset: list[str]  # [data set, split] as train.py names them, e.g. ["omniglot", "vinyals"]
    overrides: list[str] = field(default_factory=list)  # train.py settings given with the config, also when testing
    output: str = ""  # train.py's standard output: its closing test and the timing callbacks' figures

    def save(self) -> None:
        """Writes what ``load`` needs into the run folder (``benchmark.json`` beside ``checkpoints/``)."""
        fields = {"config": self.config, "train_args": self.train_args, "minutes": self.minutes, "steps": self.steps,
                  "algorithm": self.algorithm, "best": self.best.name, "log": str(self.log),
                  "closing_test": self.closing_test, "dataset": self.dataset, "overrides": self.overrides,
                  "output": self.output}
        (self.best.parents[1] / "benchmark.json").write_text(json.dumps(fields, indent=1) + "\n")

    @classmethod
    def load(cls, run: Path) -> TrainedRun:
        """An earlier benchmark run from its folder (``lightning_logs/benchmarks/<config>/version_N``)."""
        fields = json.loads((run / "benchmark.json").read_text())
        fields["best"], fields["log"] = run / "checkpoints" / fields["best"], Path(fields["log"])
        fields.setdefault("closing_test", {})  # runs recorded before train.py's test was kept
        fields.setdefault("dataset", ["omniglot", data_settings(run).get("split")])  # recorded before other data
        fields.setdefault("output", "")  # recorded before the output was kept
        return cls(**fields)

    def data(self) -> dict:
        """The run's data settings (see :func:`data_settings`)."""
        return data_settings(self.best.parents[1])

    def fields(self, test_minutes: float | None) -> dict:
        """What a record says about this run's training (:func:`run_fields`)."""
        fields = run_fields(self.best.parents[1], self.config, self.overrides, self.output, test_minutes)
        return {**fields, "dataset": self.dataset[0], "split": self.dataset[1]}

    def is_closing_test(self, overrides: tuple[str, ...]) -> bool:
        """Whether testing with ``overrides`` repeats train.py's closing test: they only restate the config's own
        test shape and episode count."""
        data = self.data()
        own = {"--data.eval_n_way": data.get("eval_n_way") or data["n_way"],
               "--data.eval_k_shot": data.get("eval_k_shot") or data["k_shot"],
               "--data.test_episodes": data["test_episodes"]}
        pairs = dict(zip(overrides[::2], overrides[1::2]))
        return bool(self.closing_test) and all(key in own and str(own[key]) == value for key, value in pairs.items())

    def test(self, *overrides: str, metric: str = "acc") -> tuple[float, float, str, float | None]:
        """Tests the best checkpoint with ``overrides``: the metric's mean, its 95% CI, a note saying how the figure
        was made, and the test's minutes."""
        metrics, note, minutes = self.test_all(*overrides)
        return *metrics[metric], note, minutes

    def test_all(self, *overrides: str) -> tuple[dict[str, tuple[float, float]], str, float | None]:
        """Tests the best checkpoint with ``overrides``: every test metric train.py prints (name without
        ``test/`` -> mean and 95% CI), a note saying how the figures were made, and the test's minutes. Where that
        test is train.py's closing test, its figures are taken rather than computed again."""
        if self.is_closing_test(overrides):
            note = (f"Trained and tested by `{command_line(['train.py', *self.train_args])}` ({self.minutes:.1f} min "
                    f"wall clock, validation and the test included); the figures are its closing test, of the best "
                    f"checkpoint {self.best.name}.")
            return self.closing_test, note, timed(self.output, "test minutes")
        test_args = ["--config", self.config, *self.overrides, "--ckpt_path", str(self.best), "--test_only", "true",
                     *overrides, "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=timing.TestTimer"]
        out = train_py(*test_args, log=self.log)
        shown = ["BEST" if arg == str(self.best) else arg for arg in test_args]
        note = (f"Trained by `{command_line(['train.py', *self.train_args])}` ({self.minutes:.1f} min wall clock, "
                f"validation included); best checkpoint {self.best.name}, tested by "
                f"`{command_line(['train.py', *shown])}`.")
        return parse_test_metrics(out), note, timed(out, "test minutes")


def train_config(config: str, log_root: str, overrides: Sequence[str] = (), budget: float | None = None) -> TrainedRun:
    """Runs ``train.py --config config *overrides`` (fit, then test of the best checkpoint) and times it: training
    and validation apart (``timing.TrainingClock``, which stops training after ``budget`` minutes of training time
    where one is given) and the test (``timing.TestTimer``)."""
    name = Path(config).stem
    log = Path(log_root) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    clock = ["--trainer.callbacks+=timing.TrainingClock", *([] if budget is None else ["--trainer.callbacks.budget",
                                                                                     f"{budget:g}"]),
             "--trainer.callbacks+=timing.TestTimer"]
    train_args = ["--config", config, *overrides, "--log_root", log_root, "--trainer.enable_progress_bar", "false",
                  *clock]
    start = time.perf_counter()
    out = train_py(*train_args, log=log)
    minutes = (time.perf_counter() - start) / 60
    run = max((Path(log_root) / name).glob("version_*"), key=lambda p: int(p.name.removeprefix("version_")))
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    algorithm = last["lightning_meta"]["algorithm"]
    trained = TrainedRun(config, train_args, minutes, last["global_step"], algorithm, best, log,
                         parse_test_metrics(out), parse_dataset(out), list(overrides), out)
    trained.save()
    return trained


def timed(out: str, what: str) -> float | None:
    """A figure printed by the callbacks of benchmarks/timing.py (``timed: 9.98 training minutes``)."""
    found = re.search(rf"^timed: ([\d.]+) {what}$", out, re.M)
    return float(found[1]) if found else None


def run_fields(run: Path, config: str, settings: list[str], fit_out: str, test_minutes: float) -> dict:
    """What a record of a trained model says about its training, from the run folder train.py wrote (its resolved
    config.yaml and last.ckpt) and the output of the timing callbacks (``TrainingClock``, ``TestTimer``)."""
    resolved = (run / "config.yaml").read_text()
    settings_of = yaml.safe_load(resolved)
    data, model = settings_of["data"]["init_args"], settings_of["model"].get("init_args", {})
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    dataset, split = parse_dataset(fit_out)
    return {
        "config": config, "config_sha256": hashlib.sha256(resolved.encode()).hexdigest(), "dataset": dataset,
        "split": split, "settings": list(settings), "train_seed": settings_of.get("seed_everything"),
        "eval_seed": data.get("eval_seed"), "precision": settings_of["trainer"].get("precision") or "32-true",
        "batch_norm": model.get("batch_norm", "none"),  # "none": the algorithm has no such setting
        "train_shape": ({"labelled_batch": data.get("batch_size")} if data.get("train_batches") == "labelled" else
                        {"ways": data.get("n_way"), "shots": data.get("k_shot"), "queries": data.get("n_query"),
                         "tasks": data.get("tasks_per_batch", 1)}),
        "steps": last["global_step"],
        "minutes": {"train": timed(fit_out, "training minutes"), "validation": timed(fit_out, "validation minutes"),
                    "test": test_minutes},
    }  # fmt: skip


def parse_test_metrics(out: str, stage: str = "test") -> dict[str, tuple[float, float]]:
    """The test metrics train.py prints (``test/acc 97.12 ± 0.31``): name without ``test/`` -> mean and 95% CI; with
    ``stage`` "val", the validation metrics it prints under ``--test_after_fit false``."""
    found = re.findall(rf"^{stage}/(\S+) (\S+) ± (\S+)", out, re.M)
    return {name: (float(mean), float(ci95)) for name, mean, ci95 in found}


def parse_dataset(out: str) -> list[str]:
    """[data set, split] from the line train.py prints for its test (``test/acc ... (omniglot/vinyals, 5-way ...``)."""
    found = re.search(r"^test/\S+ \S+ ± \S+\s+\(([^,]+),", out, re.M)
    dataset, _, split = found.group(1).partition("/") if found else ("", "", "")
    return [dataset, split]


def digest(entry: dict) -> str:
    """The SHA-256 of a record without its ``digest``: a record changed after ``record`` wrote it fails ``check``."""
    rest = {k: v for k, v in entry.items() if k != "digest"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def legacy_count(records: list[dict]) -> int:
    """How many records at the start have no schema: the legacy ones (none in a new results file)."""
    return next((n for n, r in enumerate(records) if "schema" in r), len(records))


def identity(entry: dict) -> tuple:
    return tuple(json.dumps(entry.get(k)) for k in IDENTITY)


def superseded(records: list[dict]) -> set[int]:
    """The numbers (from 1) of the records a later record supersedes."""
    return {n for r in records for n in r.get("supersedes", [])}


def current(records: list[dict]) -> list[dict]:
    """The records no later record supersedes, in order."""
    gone = superseded(records)
    return [r for n, r in enumerate(records, 1) if n not in gone]


def check(records: list[dict]) -> None:
    """Raises RecordError at the first record that breaks the schema: the legacy records as they were written;
    after them, every record of schema 2 or 3 with every common field (for a trained model, every run field too;
    from schema 3, the speed probe), its digest intact, superseding earlier records only, and no two current
    records measuring the same thing."""
    legacy = records[:legacy_count(records)]
    if legacy and hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest() != LEGACY_SHA256:
        raise RecordError(f"records 1 to {len(legacy)} have no schema: only the {LEGACY_RECORDS} records written "
                          "before the results protocol may lack one, and they are frozen (changed, moved or removed "
                          "here: restore benchmarks/results.json from git)")
    for n, r in enumerate(records[len(legacy):], len(legacy) + 1):
        where = f"record {n} ({r.get('kind')}, {r.get('algorithm')})"
        if r.get("schema") not in SCHEMAS:
            raise RecordError(f"{where}: schema is {r.get('schema')!r}, not one of {SCHEMAS}")
        fields = COMMON_FIELDS + (RUN_FIELDS if r.get("kind") in RUN_KINDS else ())
        machine_fields = MACHINE_FIELDS + (PROBE_FIELDS if r["schema"] >= 3 else ())
        missing = [k for k in fields if k not in r] + [f"machine.{k}" for k in machine_fields
                                                       if k not in r.get("machine", {})]
        if r.get("kind") in RUN_KINDS and "minutes" in r:
            missing += [f"minutes.{k}" for k in MINUTES_FIELDS if k not in r["minutes"]]
        if missing:
            raise RecordError(f"{where}: missing {', '.join(missing)}")
        if not COMMIT.match(r["commit"]):
            raise RecordError(f"{where}: commit {r['commit']!r} is not a 40-digit git commit (+dirty)")
        if r["digest"] != digest(r):
            raise RecordError(f"{where}: its digest does not match its contents (edited after it was written)")
        if not all(isinstance(k, int) and 1 <= k < n for k in r.get("supersedes", [])):
            raise RecordError(f"{where}: supersedes {r['supersedes']} (only earlier records, by number)")
    seen: dict[tuple, int] = {}
    gone = superseded(records)
    for n, r in enumerate(records, 1):
        if n in gone or n <= len(legacy):
            continue
        if identity(r) in seen:
            raise RecordError(f"record {n} ({r['kind']}, {r['algorithm']}) measures what record {seen[identity(r)]} "
                              "measured, and neither supersedes the other")
        seen[identity(r)] = n


def stamped(entry: dict, records: list[dict]) -> dict:
    """``entry`` as a record of the current schema: the commit, machine, date and command filled in where the script left them
    out, the current records it supersedes, and its digest."""
    entry = {"schema": SCHEMA, **entry}
    entry.setdefault("commit", commit())
    entry.setdefault("machine", machine())
    entry.setdefault("hardware", machine_label(entry["machine"]))
    entry.setdefault("date", today())
    entry.setdefault("command", this_command())
    gone = superseded(records)
    earlier = [n for n, r in enumerate(records, 1)
               if n > legacy_count(records) and n not in gone and identity(r) == identity(entry)]
    if earlier:
        entry["supersedes"] = earlier
    entry["digest"] = digest(entry)
    return entry


def measured_here(**match: object) -> list[dict]:
    """The current records of the protocol with the ``match`` values, made at this commit on this machine (same CPU
    model, instruction set, threads and accelerator, and a speed probe within ``PROBE_RATIO``): what a resumable
    benchmark skips."""
    here, now = machine(), commit()
    same = ("cpu", "isa", "threads", "accelerator")
    return [r for r in current(load()) if "schema" in r and r["commit"] == now
            and all(r.get(k) == v for k, v in match.items())
            and all(r["machine"][k] == here[k] for k in same) and same_speed(r["machine"], here)]


def load() -> list[dict]:
    return json.loads(JSON.read_text()) if JSON.exists() else []


def record(*entries: dict) -> None:
    """Appends records (``stamped``) and rewrites RESULTS.md and the README's copy of the Omniglot table. Nothing is
    written unless the records, old and new, pass ``check``."""
    records = load()
    for entry in entries:
        records.append(stamped(entry, records))
    save(records)


def save(records: list[dict]) -> None:
    """Writes ``records`` to results.json, and RESULTS.md and the README's table from them, once they pass ``check``."""
    check(records)
    JSON.write_text(json.dumps(records, indent=1) + "\n")
    write_pages(records)


def merge(path: Path) -> list[dict]:
    """Appends, as they were written, the records of another results file that this one lacks: records made where
    they could not be written here (on a GPU machine, or by the scripts of a commit whose ``check`` predates the
    current schema). Each keeps its digest, so it is checked as written; one that supersedes a record of its own file
    is refused (its numbers count that file's records, not these). Returns the records added."""
    records, theirs = load(), json.loads(path.read_text())
    have = {r.get("digest") for r in records}
    new = [r for r in theirs if "schema" in r and r.get("digest") not in have]
    for r in new:
        if r.get("supersedes"):
            raise RecordError(f"{path}: the {r['kind']} record of {r['algorithm']} supersedes records of that file; "
                              "rerun it here with --rerun instead of merging it")
    save([*records, *new])
    return new


def write_pages(records: list[dict]) -> None:
    """RESULTS.md and the README's copy of the Omniglot table, from the records."""
    MARKDOWN.write_text(render(records))
    if README.exists():
        README.write_text(with_readme_table(README.read_text(), records))


def speed_up_section(records: list[dict], title: str, variants: list[str], intro: list[str]) -> list[str]:
    """A table of training steps per second of each config under two variants, and the second's speed-up."""
    if not records:
        return []
    before, after = variants
    lines = [f"## {title}", "", *intro, "",
             f"| algorithm | config | {before} | {after} | speed-up | hardware | date |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        old, new = r["rates"][before], r["rates"][after]
        lines.append(f"| {r['algorithm']} | {r['config']} | {old:.3f} | {new:.3f} | **{new / old:.2f}x** | "
                     f"{r['hardware']} | {r['date']} |")
    return lines + commands(records)


def by_machine(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Rows grouped by the machine they were measured on, in order of first appearance: a table per machine."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["hardware"], []).append(r)
    return list(groups.items())


def trained(r: dict) -> str:
    """A record's training: steps and minutes (training, then validation, for records of the protocol)."""
    if "schema" in r:
        minutes = r["minutes"]
        return f"{r['steps']} steps, {minutes['train']:.1f} + {minutes['validation']:.1f} min"
    return f"{r['train_steps']} steps, {r['train_minutes']:.1f} min"


def provenance(r: dict) -> str:
    """The commit of a record, or that it was made before records named one."""
    return short_commit(r["commit"]) if r.get("commit") else "before the protocol"


def render(records: list[dict]) -> str:
    live = current(records)
    lines = ["# Results", "",
             "Made by the scripts in `benchmarks/` from `benchmarks/results.json`; do not edit by hand.",
             "Accuracy is the mean query accuracy over the test episodes with its 95% confidence interval",
             "(1.96 · s / √n), in percent. Every row names the command that produced it, and every table the machine.",
             "Records of the results protocol (docs/benchmarks.md) name their commit, seeds, precision, batch-norm",
             "mode and trained shape; their minutes are training + validation (the budget counts training), with the",
             "test's beside them. Records made before the protocol say so; superseded records are listed at the end.",
             ""]
    lines += headline_section([r for r in live if r["kind"] == "headline"])
    lines += protocol_table_section([r for r in live if r["kind"] == "table" and "schema" in r])
    table = [r for r in live if r["kind"] == "table" and "schema" not in r]
    if table:
        lines += table_section(table)
    accuracy = [r for r in live if r["kind"] == "accuracy"]
    if accuracy:
        lines += ["## Accuracy", ""]
        for hardware, group in by_machine(accuracy):
            lines += [f"Machine: {hardware}", "",
                      "| algorithm | dataset / split | episodes | test acc (%) | paper | test episodes | trained "
                      "| commit | date |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            for r in group:
                within = ", within alphabet" if r.get("within_alphabet") else ""
                steps = f", {r['inner_steps']} inner steps at test" if r.get("inner_steps") is not None else ""
                key = (r["algorithm"], r["dataset"], r["ways"], r["shots"]) + (("within alphabet",) if within else ())
                paper = PAPER.get(key)
                episodes = f"{r['ways']}-way {r['shots']}-shot{within}{steps}"
                lines.append(
                    f"| {r['algorithm']} | {r['dataset']} / {r['split']} | {episodes} | "
                    f"**{r['acc']:.2f} ± {r['ci95']:.2f}** | {paper if paper else '–'} | {r['test_episodes']} | "
                    f"{trained(r)} | {provenance(r)} | {r['date']} |")
            lines.append("")
        lines += commands(accuracy)
    regression = [r for r in live if r["kind"] == "regression"]
    if regression:
        lines += ["## Sinusoid regression", "",
                  "Mean squared error on the query points of the fixed test tasks, after fine-tuning on K points.", ""]
        for hardware, group in by_machine(regression):
            lines += [f"Machine: {hardware}", "",
                      "| algorithm | K | inner steps at test | test MSE | test tasks | trained | commit | date |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for r in group:
                lines.append(f"| {r['algorithm']} | {r['shots']} | {r['inner_steps']} | "
                             f"**{r['mse']:.3f} ± {r['ci95']:.3f}** | {r['test_episodes']} | {trained(r)} | "
                             f"{provenance(r)} | {r['date']} |")
            lines.append("")
        lines += commands(regression)
    instances = [r for r in live if r["kind"] == "instances"]
    if instances:
        numbers = sorted({int(n) for r in instances for n in r["instances"]})
        ordinal = {1: "1st", 2: "2nd", 3: "3rd"}
        lines += ["## Accuracy by instance", "",
                  "Sequences of 5 classes with 10 instances each (Santoro et al. 2016): the accuracy on the n-th",
                  "instance of a class, i.e. after n − 1 labelled examples of it, over the test episodes.", ""]
        header = ["| algorithm | dataset / split | " + " | ".join(ordinal.get(n, f"{n}th") for n in numbers)
                  + " | test episodes | trained | commit | date |",
                  "| --- | --- | " + " | ".join("---" for _ in numbers) + " | --- | --- | --- | --- |"]
        lines += ["The paper's figures:", "", *header]
        for name, figures in SANTORO.items():
            lines.append(f"| {name} (paper) | omniglot | " + " | ".join(str(figures.get(n, "–")) for n in numbers)
                         + " | – | about 100,000 episodes | – | – |")
        lines.append("")
        for hardware, group in by_machine(instances):
            lines += [f"Machine: {hardware}", "", *header]
            for r in group:
                cells = [f"**{r['instances'][str(n)][0]:.1f} ± {r['instances'][str(n)][1]:.1f}**"
                         if str(n) in r["instances"] else "–" for n in numbers]
                lines.append(f"| {r['algorithm']} | {r['dataset']} / {r['split']} | " + " | ".join(cells) + " | "
                             f"{r['test_episodes']} | {trained(r)} | {provenance(r)} | {r['date']} |")
            lines.append("")
        lines += commands(instances)
    # The next four sections: one-off comparisons whose scripts have left benchmarks/ (docs/benchmarks.md names the
    # commits that hold them); their texts describe the runs recorded, with the code of that time.
    lines += speed_up_section(
        [r for r in live if r["kind"] == "allocator"], "Allocator", ["glibc default", "freed memory kept"],
        ["Training steps per second of each config with glibc's default allocator and with",
         "`keep_freed_memory` (lightning_meta/runtime.py), which train.py applies."])
    lines += speed_up_section(
        [r for r in live if r["kind"] == "native_batch_norm"], "Batch norm kernel",
        ["tensor operations", "native kernel"],
        ["Training steps per second of the learners that do not differentiate through their inner steps, with",
         "MetaBatchNorm in plain tensor operations (exact to every order under vmap) and through PyTorch's native",
         "kernel (exact to first order), which they use."])
    lines += speed_up_section(
        [r for r in live if r["kind"] == "metanet_generators"], "Meta Networks' meta-learners",
        ["autograd (before)", "coordinate-wise (now)"],
        ["Training steps per second of Meta Networks with its meta-learners d (an LSTM) and m (an MLP) run on every",
         "weight coordinate through nn.LSTMCell and nn.Sequential under autograd, as before, and as the chunked",
         "coordinate-wise networks with hand-written backward passes (lightning_meta/algorithms/coordinatewise.py)."])
    lines += speed_up_section(
        [r for r in live if r["kind"] == "metanet_pieces"], "Meta Networks' m by pieces",
        ["layers in chunks (before)", "by pieces (now)"],
        ["Training steps per second of Meta Networks with its MLP m computed through its layers over chunks of",
         "coordinates (coordinatewise.py at commit 76620d3) and by pieces along the lines its inputs lie on (now),",
         "in one process, the two taking turns step by step (benchmarks/timing.py, `compare_interleaved`)."])
    scaling = [r for r in live if r["kind"] == "ddp_bf16"]
    if scaling:
        lines += ["## Distributed training and bfloat16", "",
                  "Training steps per second of each Omniglot 5-way 1-shot config with the same meta-batch of 2T tasks",
                  "per step (T: the config's tasks per step): in one process; split over 2 DDP processes (gloo) of",
                  "T tasks each, its time per step relative to one process's; in one process under",
                  "`trainer.precision: bf16-mixed`, its speed relative to fp32. Both one-process runs are then tested",
                  "on the same episodes (same seed, same short training), accuracy ± 95% CI.", "",
                  "| algorithm | meta-batch | fp32, 1 process | DDP, 2 processes | DDP time / 1 process | bf16-mixed | "
                  "bf16 speed / fp32 | test acc fp32 | test acc bf16 | trained | hardware | date |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in scaling:
            one, ddp, bf16 = (r["rates"][k] for k in ("1 process, fp32", "DDP, 2 processes, fp32",
                                                      "1 process, bf16-mixed"))
            fp32_acc, bf16_acc = r["accuracy"]["1 process, fp32"], r["accuracy"]["1 process, bf16-mixed"]
            lines.append(f"| {r['algorithm']} | {r['meta_batch']} | {one:.3f} | {ddp:.3f} | **{one / ddp:.2f}x** | "
                         f"{bf16:.3f} | **{bf16 / one:.2f}x** | {fp32_acc[0]:.2f} ± {fp32_acc[1]:.2f} | "
                         f"{bf16_acc[0]:.2f} ± {bf16_acc[1]:.2f} | {r['warmup'] + r['steps']} steps, "
                         f"{r['test_episodes']} test episodes | {r['hardware']} | {r['date']} |")
        lines += commands(scaling)
    predictions = [r for r in live if r["kind"] == "predict"]
    if predictions:
        lines += ["## Prediction on your own images", "",
                  "Lake's one-shot task done with `train.py predict` (docs/predict.md): for each of Omniglot's 20",
                  "evaluation alphabets, a support folder of one drawing of each of 20 of its characters (all, where it",
                  "has fewer) by one drawer, and a drawing of each by another drawer to classify, as PNG files.", "",
                  "| algorithm | checkpoint | queries right | per alphabet | commit | hardware | date |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in predictions:
            alphabets = ", ".join(f"{name} {c}/{n}" for name, (c, n) in r["per_alphabet"].items())
            lines.append(f"| {r['algorithm']} | {r['checkpoint']} (step {r['global_step']}) | "
                         f"**{r['correct']} / {r['queries']} ({100 * r['correct'] / r['queries']:.1f}%)** | "
                         f"{alphabets} | {short_commit(r['commit'])} | {r['hardware']} | {r['date']} |")
        lines += commands(predictions)
    lines += config_speed_section([r for r in live if r["kind"] == "config_speed"])
    throughput = [r for r in live if r["kind"] == "throughput"]
    if throughput:
        lines += ["## Throughput", "",
                  "| algorithm | episodes | path | unit | per second | hardware | date |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in throughput:
            unit = r.get("unit", "training episodes")
            rates = r.get("rates") or r["episodes_per_second"]
            for path, value in rates.items():
                if "speed_ups" in r and path != r["speed_up_over"]:
                    path += f" ({r['speed_ups'][path]:.2f}x {r['speed_up_over']}, same runs)"
                lines.append(f"| {r['algorithm']} | {r['ways']}-way {r['shots']}-shot | {path} | {unit} | "
                             f"{value:.2f} | {r['hardware']} | {r['date']} |")
        lines += commands(throughput)
    lines += feature_cache_section([r for r in live if r["kind"] == "feature_cache"])
    lines += tuning_section([r for r in live if r["kind"] == "tuning"])
    lines += gpu_check_section([r for r in live if r["kind"] == "gpu_check"])
    lines += superseded_section(records)
    return "\n".join(lines)


def feature_cache_section(rows: list[dict]) -> list[str]:
    """benchmarks/feature_cache.py: the test of a frozen backbone with and without ``model.cache_features``."""
    if not rows:
        return []
    lines = ["## Feature cache", "",
             "Seconds of the test loop (first batch to end) of ProtoNet with a frozen backbone, through train.py",
             "`--test_only`, with f_θ run on every episode's images and with the feature cache (each distinct image",
             "embedded once per test), alternating in one process; the accuracy of both on the same episodes.", "",
             "| backbone | dataset / split | episodes | test episodes | f_θ on every episode (s) | feature cache (s) "
             "| speed-up | test acc without / with | commit | hardware | date |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        (plain, plain_ci), (cached, cached_ci) = r["accuracy"]["f_θ on every episode"], r["accuracy"]["feature cache"]
        lines.append(f"| {r['backbone']} | {r['dataset']} / {r['split']} | {r['ways']}-way {r['shots']}-shot, "
                     f"{r['queries']} queries | {r['test_episodes']} | {r['seconds']['f_θ on every episode']:.1f} | "
                     f"{r['seconds']['feature cache']:.1f} | **{r['speed_up']:.2f}x** | {plain:.2f} ± {plain_ci:.2f} / "
                     f"{cached:.2f} ± {cached_ci:.2f} | {short_commit(r['commit'])} | {r['hardware']} | {r['date']} |")
    return lines + commands(rows)


def short_commit(commit: str) -> str:
    """A record's commit in 12 digits, keeping its ``+dirty``."""
    head, plus, dirty = commit.partition("+")
    return head[:12] + plus + dirty


def config_speed_section(records: list[dict]) -> list[str]:
    """benchmarks/config_speed.py: training steps per second of configs under variants, by comparison."""
    if not records:
        return []
    lines = ["## Configs side by side", "",
             "Training steps per second through train.py (medians of alternating fresh processes,",
             "benchmarks/config_speed.py), and each variant's ratio to the first."]
    for comparison in sorted({r["comparison"] for r in records}):
        group = [r for r in records if r["comparison"] == comparison]
        names = list(group[0]["rates"])
        lines += ["", f"### {comparison}", "", "Variants: " + "; ".join(
            f"{name}: `{setting or 'as shipped'}`" for name, setting in group[0]["variants"].items()), "",
            f"| config | {' | '.join(names)} | {' | '.join(f'{n} / {names[0]}' for n in names[1:])} | commit | "
            "hardware | date |", "| --- " * (2 * len(names) + 3) + "|"]
        for r in group:
            rates = [r["rates"][n] for n in names]
            lines.append(f"| {r['config']} | " + " | ".join(f"{v:.3f}" for v in rates) + " | " +
                         " | ".join(f"{v / rates[0]:.2f}" for v in rates[1:]) +
                         f" | {short_commit(r['commit'])} | {r['hardware']} | {r['date']} |")
        lines += ["", "Commands:", "", *sorted({f"- `{r['command']}`" for r in group})]
    return lines + [""]


def table_header(*columns: str) -> list[str]:
    """The header lines of an Omniglot table: algorithm, the shapes, then ``columns``."""
    names = ["algorithm", *TABLE_SHAPES, *columns]
    return ["| " + " | ".join(names) + " |", "| " + " | ".join("---" for _ in names) + " |"]


def table_cell(record: dict, shape: str) -> str:
    """A table record's accuracy at ``shape``: mean ± 95% CI."""
    mean, ci95 = record["cells"][shape]
    return f"{mean:.2f} ± {ci95:.2f}"


def table_section(table: list[dict]) -> list[str]:
    """The Omniglot table as ``benchmarks/table.py`` made it before the results protocol: one row per algorithm, a
    table per machine, and the throughput at 5-way 1-shot."""
    lines = ["## Omniglot table, before the results protocol", "",
             "Every algorithm trained within the stated budget per config, wall clock with validation and the test",
             f"(`benchmarks/table.py` of that time), tested on the same {table[0]['test_episodes']} test episodes of "
             "each shape (Omniglot vinyals split); mean ± 95% CI, the paper's number in brackets. These rows name no",
             f"commit, and were made on {len(by_machine(table))} machines.", ""]
    for hardware, group in by_machine(table):
        lines += [f"Machine: {hardware}", "", *table_header("trained", "budget", "date")]
        for r in group:
            cells = []
            for shape in TABLE_SHAPES:
                paper = f" ({r['paper'][shape]})" if r["paper"].get(shape) else ""
                cells.append(f"**{table_cell(r, shape)}**{paper}" if shape in r["cells"] else "–")
            name = f"[{r['algorithm']}](#accuracy-by-instance)" if r["algorithm"] == "mann" else r["algorithm"]
            steps = "; ".join(f"{t['config']}: {t['steps']} steps, {t['minutes']:.1f} min" for t in r["trainings"])
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {steps} | {r['budget']} | {r['date']} |")
        lines.append("")
    lines += ["Throughput at 5-way 1-shot (from the runs above: training without validation, and the 5w1s test):",
              "", "| algorithm | training episodes per second | test episodes per second | machine |",
              "| --- | --- | --- | --- |"]
    for r in table:
        rates = [r["throughput"].get(k) for k in ("training episodes", "test episodes")]
        lines.append(f"| {r['algorithm']} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in rates)
                     + f" | {r['hardware'].split(', ')[0]} |")
    lines += ["", "Commands:", ""]
    for r in table:
        lines.append(f"- {r['algorithm']}: `{r['command']}`; trained by "
                     + "; ".join(f"`{t['command']}`" for t in r["trainings"]))
    return lines + [""]


def trained_on(r: dict) -> str:
    """The episode shape a record's model was trained on (or the size of its labelled batches)."""
    shape = r["train_shape"]
    if "labelled_batch" in shape:
        return f"labelled batches of {shape['labelled_batch']}"
    tasks = f", {shape['tasks']} tasks per step" if shape.get("tasks", 1) > 1 else ""
    queries = f"{shape['queries']} {'query' if shape['queries'] == 1 else 'queries'}"
    return f"{shape['ways']}-way {shape['shots']}-shot, {queries}{tasks}"


def part_configs(part: str) -> list[str]:
    """The configs of one part of ``TABLE_PARTS``, in its order."""
    return [config for plan in TABLE_PARTS[part].values() for config, _ in plan]


def protocol_table_section(rows: list[dict]) -> list[str]:
    """The Omniglot table of ``benchmarks/table.py`` under the results protocol: one table per commit and machine,
    one row per trained config, in the order of ``TABLE_PLAN``; the configs still to be measured in the parts of
    ``TABLE_PARTS`` a table has rows of are named."""
    if not rows:
        return []
    order = [config for plan in TABLE_PLAN.values() for config, _ in plan]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["commit"], r["hardware"]), []).append(r)
    lines = ["## Omniglot table", "",
             "Every algorithm's Omniglot configs, each trained for the stated budget of training time",
             "(`benchmarks/table.py`), validation and the test timed apart; the best checkpoint by validation",
             f"accuracy tested on the same {rows[0]['test_episodes']} test episodes of each shape (vinyals split),",
             "mean ± 95% CI, the paper's number in brackets. Batch norm: the statistics used at test",
             "(`transductive`: the episode's own; `running`: from training; `support`: the support set's; `none`: the",
             "algorithm has no such setting).", ""]
    for (commit_, hardware), group in sorted(groups.items(), key=lambda item: -len(item[1])):
        group.sort(key=lambda r: order.index(r["config"]) if r["config"] in order else len(order))
        lines += [f"Commit {short_commit(commit_)}; machine: {hardware}{probes(group)}.", "",
                  "| algorithm | config | trained on | batch norm | precision | " + " | ".join(TABLE_SHAPES)
                  + " | steps | minutes (training + validation) | test minutes | budget | date |",
                  "| --- " * (len(TABLE_SHAPES) + 10) + "|"]
        for r in group:
            cells = []
            for shape in TABLE_SHAPES:
                paper = f" ({r['paper'][shape]})" if r["paper"].get(shape) else ""
                cells.append(f"**{table_cell(r, shape)}**{paper}" if shape in r["cells"] else "–")
            minutes = r["minutes"]
            lines.append(f"| {r['algorithm']} | {r['config']} | {trained_on(r)} | {r['batch_norm']} | "
                         f"{r['precision']} | " + " | ".join(cells) + f" | {r['steps']} | {minutes['train']:.1f} + "
                         f"{minutes['validation']:.1f} | {minutes['test']:.1f} | {r['budget']} | {r['date']} |")
        measured = {r["config"] for r in group}
        begun = [part for part in TABLE_PARTS if measured & set(part_configs(part))]
        missing = [config for part in begun for config in part_configs(part) if config not in measured]
        if missing:
            lines += ["", f"Not yet measured at this commit on this machine: {', '.join(missing)}."]
        lines += ["", "Commands:", ""]
        for r in group:
            lines.append(f"- {r['config']}: `{r['command']}`; trained by `{r['train_command']}`")
        lines.append("")
    return lines


def seeds_needed(first: dict, target: float | None) -> int:
    """Training seeds a headline figure needs: 2, or 3 where the first seed's interval includes the target."""
    return 3 if target is not None and first["acc"] - first["ci95"] <= target <= first["acc"] + first["ci95"] else 2


def headline_section(rows: list[dict]) -> list[str]:
    """benchmarks/headline.py: each algorithm's 5-way 1-shot target run over training seeds, each seed tested on the
    config's test episodes and on fresh ones (a second evaluation seed); the mean and spread over seeds, and whether
    the mean meets the target within the budget."""
    if not rows:
        return []
    lines = ["## Headline figures over training seeds", "",
             "Each algorithm's 5-way 1-shot target run (`benchmarks/headline.py`), one row per config, a line per",
             "training seed: test accuracy on the config's 1,000 test episodes, and in brackets on 1,000 fresh test",
             "episodes of the same test classes (evaluation seed 1). A target is met when the mean over seeds is at",
             "or above it and every seed trained within the target's budget of training time (the training stops at",
             "the first step past it). Spread: standard deviation over seeds.", ""]
    for hardware, group in by_machine(rows):
        runs: dict[tuple, list[dict]] = {}
        for r in group:
            runs.setdefault((r["algorithm"], r["config"], r["budget"], r["metric"]), []).append(r)
        lines += [f"Machine: {hardware}{probes(group)}", "",
                  "| algorithm | config | metric | target | budget | seeds: test acc [fresh episodes] | mean | spread "
                  "| met | steps, minutes (training + validation) | commit |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for (algorithm, config, budget, metric), seeds in runs.items():
            seeds.sort(key=lambda r: r["train_seed"])
            target = seeds[0]["target"]
            accs = [r["acc"] for r in seeds]
            mean = sum(accs) / len(accs)
            spread = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else None
            needed = seeds_needed(seeds[0], target)
            within = all(r["budget_minutes"] <= r["target_minutes"] for r in seeds)  # TrainingClock kept to it
            if len(seeds) < needed:
                met = f"pending ({len(seeds)} of {needed} seeds)"
            elif target is None:
                met = "no target"
            else:
                met = "**met**" if mean >= target and within else "not met"
            per_seed = "<br>".join(f"seed {r['train_seed']}: {r['acc']:.2f} ± {r['ci95']:.2f} "
                                   f"[{r['fresh']['acc']:.2f} ± {r['fresh']['ci95']:.2f}]" for r in seeds)
            runs_ = "<br>".join(f"{r['steps']}, {r['minutes']['train']:.1f} + {r['minutes']['validation']:.1f}"
                                for r in seeds)
            lines.append(f"| {algorithm} | {config} | {metric} | {target if target is not None else '–'} | {budget} | "
                         f"{per_seed} | **{mean:.2f}** | {'–' if spread is None else f'{spread:.2f}'} | {met} | "
                         f"{runs_} | {', '.join(sorted({short_commit(r['commit']) for r in seeds}))} |")
        lines += ["", "Commands:", "", *[f"- {r['algorithm']} seed {r['train_seed']}: `{r['command']}`; trained by "
                                          f"`{r['train_command']}`" for r in group], ""]
    return lines


def machine_tables(rows: list[dict], intro: list[str], header: str, row: Callable[[dict], str]) -> list[str]:
    """A section of ``intro``, then per machine its line, a table of ``header``'s columns with ``row`` of each
    record, and the commands."""
    lines = [*intro, ""]
    for hardware, group in by_machine(rows):
        lines += [f"Machine: {hardware}", "", header, "| --- " * header.count(" | ") + "| --- |",
                  *map(row, group), "", "Commands:", "", *sorted({f"- `{r['command']}`" for r in group}), ""]
    return lines


def gpu_check_row(r: dict) -> str:
    settings = r["settings"]
    devices = settings[settings.index("--trainer.devices") + 1] if "--trainer.devices" in settings else "1"
    rate = r["training_steps_per_second"]
    return (f"| {r['part']} | {r['config']} | {r['precision']} | {devices} | {r['steps']} | "
            f"{'–' if rate is None else f'{rate:.2f}'} | **{r['acc']:.2f} ± {r['ci95']:.2f}** | "
            f"{r['test_episodes']} | {r['minutes']['train']:.1f} + {r['minutes']['validation']:.1f} | "
            f"{provenance(r)} |")


def gpu_check_section(rows: list[dict]) -> list[str]:
    """benchmarks/gpu_check.py: each config's short runs by precision and under DDP, and the papers' recipes."""
    if not rows:
        return []
    return machine_tables(rows, [
        "## GPU check", "",
        "`benchmarks/gpu_check.py`: every algorithm's config for a few hundred steps in each precision, then",
        "under DDP over every GPU present, then the papers' full recipes of ProtoNet and MAML within a budget of",
        "training time; training steps per second (after 20 warm-up steps) and the test accuracy."],
        "| part | config | precision | devices | steps | steps per second | test acc | test episodes | "
        "minutes (training + validation) | commit |", gpu_check_row)


def tuning_row(r: dict) -> str:
    return (f"| {r['config']} | {r['variant']} | `{' '.join(r['variant_settings']) or 'as shipped'}` | "
            f"**{r['acc']:.2f} ± {r['ci95']:.2f}** | {r['val_episodes']} | {r['train_seed']} | "
            f"{trained(r)} | {r['budget'] or 'max_steps'} | {provenance(r)} | {r['date']} |")


def tuning_section(rows: list[dict]) -> list[str]:
    """benchmarks/tune.py: variants of a config's recipe, each scored on validation episodes only."""
    if not rows:
        return []
    return machine_tables(rows, [
        "## Recipes chosen on validation episodes", "",
        "`benchmarks/tune.py`: a config under variants of its settings, each trained for the stated budget of",
        "training time and its best checkpoint validated (`train.py --test_after_fit false`: the test split is",
        "never loaded); validation accuracy on the config's validation episodes, mean ± 95% CI."],
        "| config | variant | settings | val acc | val episodes | seed | steps, minutes (training + validation) | "
        "budget | commit | date |", tuning_row)


def figure(r: dict) -> str:
    """A record's main figure, for the list of superseded records."""
    if "acc" in r:
        return f"{r['acc']:.2f} ± {r['ci95']:.2f}"
    if "mse" in r:
        return f"MSE {r['mse']:.3f} ± {r['ci95']:.3f}"
    if "cells" in r:
        return ", ".join(f"{shape} {table_cell(r, shape)}" for shape in TABLE_SHAPES if shape in r["cells"])
    return "–"


def superseded_section(records: list[dict]) -> list[str]:
    """Every record a later one supersedes: kept in the records, listed here with the record that replaced it."""
    by = {n: later for later, r in enumerate(records, 1) for n in r.get("supersedes", [])}
    if not by:
        return []
    lines = ["## Superseded records", "",
             "Records that a later record of the same measurement (same kind, algorithm, config, shape, budget,",
             "settings and seeds) supersedes; numbers count from 1 in benchmarks/results.json.", "",
             "| record | kind | algorithm | config | figure | commit | machine | date | superseded by |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n, later in sorted(by.items()):
        r = records[n - 1]
        lines.append(f"| {n} | {r['kind']} | {r['algorithm']} | {r.get('config') or '–'} | {figure(r)} | "
                     f"{provenance(r)} | {r['hardware']} | {r['date']} | {later} |")
    return lines + [""]


def complete_table(records: list[dict], part: str) -> list[dict] | None:
    """The current protocol table records of one commit and machine that cover every config of ``part`` (of
    ``TABLE_PARTS``), the latest such, in the part's order; or None while no such table is complete."""
    order = part_configs(part)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in current(records):
        if r["kind"] == "table" and "schema" in r and r["config"] in order:
            groups.setdefault((r["commit"], r["hardware"]), []).append(r)
    complete = [g for g in groups.values() if set(order) <= {r["config"] for r in g}]
    return sorted(complete[-1], key=lambda r: order.index(r["config"])) if complete else None


def readme_part(part: str, rows: list[dict]) -> list[str]:
    """One complete part of the Omniglot table for the README: the cells and where they were measured."""
    lines = ["| algorithm | config | " + " | ".join(TABLE_SHAPES) + " | trained on | batch norm | budget |",
             "| --- " * (len(TABLE_SHAPES) + 5) + "|"]
    for r in rows:
        cells = [table_cell(r, shape) if shape in r["cells"] else "–" for shape in TABLE_SHAPES]
        lines.append(f"| {r['algorithm']} | {r['config']} | " + " | ".join(cells) + f" | {trained_on(r)} | "
                     f"{r['batch_norm']} | {r['budget']} |")
    return [*lines, "", f"{part.capitalize()}: Omniglot vinyals split, {rows[0]['test_episodes']} test episodes per "
            f"cell, mean ± 95% CI (%); commit {short_commit(rows[0]['commit'])}, {rows[0]['hardware']}; "
            f"`{rows[0]['command']}`. The papers' numbers, steps and minutes: RESULTS.md.", ""]


def with_readme_table(readme: str, records: list[dict]) -> str:
    """``readme`` with the block between the ``README_TABLE`` markers replaced by the Omniglot table: per part of
    ``TABLE_PARTS``, the table of the results protocol once one commit and machine cover its configs; while the
    meta-learners' part is not complete, the table made before the protocol in its place. The cells and the command
    that reproduces each row (RESULTS.md has the rest: steps, minutes, the train.py commands)."""
    begin, end = README_TABLE
    if readme.count(begin) != 1 or readme.count(end) != 1:
        raise SystemExit(f"{README} needs one line {begin!r} and one {end!r} around its Omniglot table")
    head, rest = readme.split(begin)
    tail = rest.split(end)[1]
    lines = []
    for part in TABLE_PARTS:
        rows = complete_table(records, part)
        if rows:
            lines += readme_part(part, rows)
        elif part == "meta-learners":
            lines += legacy_table(records)
    return "\n".join([head + begin, "", *lines, end]) + tail


def legacy_table(records: list[dict]) -> list[str]:
    """The Omniglot table made before the results protocol, for the README."""
    table = [r for r in current(records) if r["kind"] == "table" and "schema" not in r]
    lines = table_header("budget", "CPU", "reproduce")
    for r in table:
        cells = [table_cell(r, shape) if shape in r["cells"] else "–" for shape in TABLE_SHAPES]
        cpu = r["hardware"].split(", ")[0]
        lines.append(f"| {r['algorithm']} | " + " | ".join(cells) + f" | {r['budget']} | {cpu} | `{r['command']}` |")
    dates = sorted({r["date"] for r in table})
    setups = sorted({r["hardware"].partition(", ")[2] for r in table})  # threads, torch and Python
    lines += ["", f"Omniglot vinyals split, {table[0]['test_episodes'] if table else 0} test episodes per cell, mean ± "
              f"95% CI (%); {'; '.join(setups) or '–'}; {', '.join(dates) or '–'}. Made before the results protocol "
              f"(no commit; {len(by_machine(table))} machines, by row above). The papers' numbers, training steps and "
              "minutes: RESULTS.md.", ""]
    return lines


def commands(records: list[dict]) -> list[str]:
    lines = ["", "Commands:", ""]
    for r in records:
        steps = f", {r['inner_steps']} inner steps" if r.get("inner_steps") is not None else ""
        lines.append(f"- {r['algorithm']} {r['ways']}w{r['shots']}s{steps}: `{r['command']}`")
        if r.get("note"):
            lines.append(f"  {r['note']}")
    return lines + [""]


if __name__ == "__main__":  # python benchmarks/results.py: checks the records and writes RESULTS.md from them again
    parser = argparse.ArgumentParser(description="Checks the records and writes RESULTS.md from them again.")
    parser.add_argument("--merge", type=Path, metavar="RESULTS_JSON",
                        help="first append the records of this file that results.json lacks (see merge)")
    args = parser.parse_args()
    if args.merge:
        print(f"{len(merge(args.merge))} records added from {args.merge}")
    every = load()
    check(every)
    write_pages(every)
