"""Benchmark records: ``benchmarks/results.json`` (a list of records) and ``RESULTS.md`` made from it.

A new measurement replaces the record with the same kind, algorithm, dataset, split, ways, shots and
within_alphabet, so re-running a benchmark updates its rows and leaves the others alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
OTHER = os.environ.get("LIGHTNING_META_RESULTS")  # a folder for results.json and RESULTS.md (the tests' smoke runs)
JSON = Path(OTHER, "results.json") if OTHER else ROOT / "benchmarks" / "results.json"
MARKDOWN = Path(OTHER, "RESULTS.md") if OTHER else ROOT / "RESULTS.md"
README = Path(OTHER, "README.md") if OTHER else ROOT / "README.md"  # its results section shows the Omniglot table
README_TABLE = ("<!-- the Omniglot table: written by benchmarks/results.py from results.json -->",
                "<!-- end of the Omniglot table -->")
TABLE_SHAPES = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}  # the Omniglot table's columns
IDENTITY = ("kind", "algorithm", "dataset", "split", "ways", "shots", "within_alphabet", "inner_steps", "config",
            "comparison")

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


def hardware() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    threads = torch.get_num_threads()
    isa = torch.backends.cpu.get_cpu_capability()  # the vector width PyTorch's kernels use: one model name ("AMD
    # EPYC") has covered a 2.7x slower AVX2 machine and an AVX512 one here
    return (f"{cpu} ({isa}), {threads} threads, CPU only, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


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

    def save(self) -> None:
        """Writes what ``load`` needs into the run folder (``benchmark.json`` beside ``checkpoints/``)."""
        fields = {"config": self.config, "train_args": self.train_args, "minutes": self.minutes, "steps": self.steps,
                  "algorithm": self.algorithm, "best": self.best.name, "log": str(self.log),
                  "closing_test": self.closing_test, "dataset": self.dataset, "overrides": self.overrides}
        (self.best.parents[1] / "benchmark.json").write_text(json.dumps(fields, indent=1) + "\n")

    @classmethod
    def load(cls, run: Path) -> TrainedRun:
        """An earlier benchmark run from its folder (``lightning_logs/benchmarks/<config>/version_N``)."""
        fields = json.loads((run / "benchmark.json").read_text())
        fields["best"], fields["log"] = run / "checkpoints" / fields["best"], Path(fields["log"])
        fields.setdefault("closing_test", {})  # runs recorded before train.py's test was kept
        fields.setdefault("dataset", ["omniglot", data_settings(run).get("split")])  # recorded before other data
        return cls(**fields)

    def data(self) -> dict:
        """The run's data settings (see :func:`data_settings`)."""
        return data_settings(self.best.parents[1])

    def is_closing_test(self, overrides: tuple[str, ...]) -> bool:
        """Whether testing with ``overrides`` repeats train.py's closing test: they only restate the config's own
        test shape and episode count."""
        data = self.data()
        own = {"--data.eval_n_way": data.get("eval_n_way") or data["n_way"],
               "--data.eval_k_shot": data.get("eval_k_shot") or data["k_shot"],
               "--data.test_episodes": data["test_episodes"]}
        pairs = dict(zip(overrides[::2], overrides[1::2]))
        return bool(self.closing_test) and all(key in own and str(own[key]) == value for key, value in pairs.items())

    def test(self, *overrides: str, metric: str = "acc") -> tuple[float, float, str]:
        """Tests the best checkpoint with ``overrides``: the metric's mean, its 95% CI, and a note saying how
        the figure was made."""
        metrics, note = self.test_all(*overrides)
        return *metrics[metric], note

    def test_all(self, *overrides: str) -> tuple[dict[str, tuple[float, float]], str]:
        """Tests the best checkpoint with ``overrides``: every test metric train.py prints (name without
        ``test/`` -> mean and 95% CI), and a note saying how the figures were made. Where that test is train.py's
        closing test, its figures are taken rather than computed again."""
        if self.is_closing_test(overrides):
            note = (f"Trained and tested by `{command_line(['train.py', *self.train_args])}` ({self.minutes:.1f} min "
                    f"wall clock, validation and the test included); the figures are its closing test, of the best "
                    f"checkpoint {self.best.name}.")
            return self.closing_test, note
        test_args = ["--config", self.config, *self.overrides, "--ckpt_path", str(self.best), "--test_only", "true",
                     *overrides, "--trainer.enable_progress_bar", "false"]
        metrics = parse_test_metrics(train_py(*test_args, log=self.log))
        shown = ["BEST" if arg == str(self.best) else arg for arg in test_args]
        note = (f"Trained by `{command_line(['train.py', *self.train_args])}` ({self.minutes:.1f} min wall clock, "
                f"validation included); best checkpoint {self.best.name}, tested by "
                f"`{command_line(['train.py', *shown])}`.")
        return metrics, note


def train_config(config: str, log_root: str, overrides: Sequence[str] = ()) -> TrainedRun:
    """Runs ``train.py --config config *overrides`` (fit, then test of the best checkpoint) and times it."""
    name = Path(config).stem
    log = Path(log_root) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    train_args = ["--config", config, *overrides, "--log_root", log_root, "--trainer.enable_progress_bar", "false"]
    start = time.perf_counter()
    out = train_py(*train_args, log=log)
    minutes = (time.perf_counter() - start) / 60
    run = max((Path(log_root) / name).glob("version_*"), key=lambda p: int(p.name.removeprefix("version_")))
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    algorithm = last["lightning_meta"]["algorithm"]
    trained = TrainedRun(config, train_args, minutes, last["global_step"], algorithm, best, log,
                         parse_test_metrics(out), parse_dataset(out), list(overrides))
    trained.save()
    return trained


def parse_test_metrics(out: str) -> dict[str, tuple[float, float]]:
    """The test metrics train.py prints (``test/acc 97.12 ± 0.31``): name without ``test/`` -> mean and 95% CI."""
    found = re.findall(r"^test/(\S+) (\S+) ± (\S+)", out, re.M)
    return {name: (float(mean), float(ci95)) for name, mean, ci95 in found}


def parse_dataset(out: str) -> list[str]:
    """[data set, split] from the line train.py prints for its test (``test/acc ... (omniglot/vinyals, 5-way ...``)."""
    found = re.search(r"^test/\S+ \S+ ± \S+\s+\(([^,]+),", out, re.M)
    dataset, _, split = found.group(1).partition("/") if found else ("", "", "")
    return [dataset, split]


def record(*entries: dict) -> None:
    """Adds (or replaces) records and rewrites RESULTS.md and the README's copy of the Omniglot table."""
    records = json.loads(JSON.read_text()) if JSON.exists() else []
    for entry in entries:
        records = [r for r in records if tuple(r.get(k) for k in IDENTITY) != tuple(entry.get(k) for k in IDENTITY)]
        records.append(entry)
    records.sort(key=lambda r: tuple(str(r.get(k)) for k in IDENTITY))
    JSON.write_text(json.dumps(records, indent=1) + "\n")
    MARKDOWN.write_text(render(records))
    if README.exists():
        README.write_text(with_readme_table(README.read_text(), [r for r in records if r["kind"] == "table"]))


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


def render(records: list[dict]) -> str:
    lines = ["# Results", "",
             "Made by the scripts in `benchmarks/` from `benchmarks/results.json`; do not edit by hand.",
             "Accuracy is the mean query accuracy over the test episodes with its 95% confidence interval",
             "(1.96 · s / √n), in percent. Every row names the command that produced it.", ""]
    table = [r for r in records if r["kind"] == "table"]
    if table:
        lines += table_section(table)
    accuracy = [r for r in records if r["kind"] == "accuracy"]
    if accuracy:
        lines += ["## Accuracy", "",
                  "| algorithm | dataset / split | episodes | test acc (%) | paper | test episodes | trained "
                  "| hardware | date |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in accuracy:
            within = ", within alphabet" if r.get("within_alphabet") else ""
            steps = f", {r['inner_steps']} inner steps at test" if r.get("inner_steps") is not None else ""
            key = (r["algorithm"], r["dataset"], r["ways"], r["shots"]) + (("within alphabet",) if within else ())
            paper = PAPER.get(key)
            episodes = f"{r['ways']}-way {r['shots']}-shot{within}{steps}"
            lines.append(
                f"| {r['algorithm']} | {r['dataset']} / {r['split']} | {episodes} | "
                f"**{r['acc']:.2f} ± {r['ci95']:.2f}** | {paper if paper else '–'} | {r['test_episodes']} | "
                f"{r['train_steps']} steps, {r['train_minutes']:.1f} min | {r['hardware']} | {r['date']} |")
        lines += commands(accuracy)
    regression = [r for r in records if r["kind"] == "regression"]
    if regression:
        lines += ["## Sinusoid regression", "",
                  "Mean squared error on the query points of the fixed test tasks, after fine-tuning on K points.",
                  "",
                  "| algorithm | K | inner steps at test | test MSE | test tasks | trained | hardware | date |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in regression:
            lines.append(f"| {r['algorithm']} | {r['shots']} | {r['inner_steps']} | "
                         f"**{r['mse']:.3f} ± {r['ci95']:.3f}** | {r['test_episodes']} | "
                         f"{r['train_steps']} steps, {r['train_minutes']:.1f} min | {r['hardware']} | {r['date']} |")
        lines += commands(regression)
    instances = [r for r in records if r["kind"] == "instances"]
    if instances:
        numbers = sorted({int(n) for r in instances for n in r["instances"]})
        ordinal = {1: "1st", 2: "2nd", 3: "3rd"}
        lines += ["## Accuracy by instance", "",
                  "Sequences of 5 classes with 10 instances each (Santoro et al. 2016): the accuracy on the n-th",
                  "instance of a class, i.e. after n − 1 labelled examples of it, over the test episodes.", "",
                  "| algorithm | dataset / split | " + " | ".join(ordinal.get(n, f"{n}th") for n in numbers)
                  + " | test episodes | trained | hardware | date |",
                  "| --- | --- | " + " | ".join("---" for _ in numbers) + " | --- | --- | --- | --- |"]
        for name, figures in SANTORO.items():
            lines.append(f"| {name} (paper) | omniglot | " + " | ".join(str(figures.get(n, "–")) for n in numbers)
                         + " | – | about 100,000 episodes | – | – |")
        for r in instances:
            cells = [f"**{r['instances'][str(n)][0]:.1f} ± {r['instances'][str(n)][1]:.1f}**"
                     if str(n) in r["instances"] else "–" for n in numbers]
            lines.append(f"| {r['algorithm']} | {r['dataset']} / {r['split']} | " + " | ".join(cells) + " | "
                         f"{r['test_episodes']} | {r['train_steps']} steps, {r['train_minutes']:.1f} min | "
                         f"{r['hardware']} | {r['date']} |")
        lines += commands(instances)
    # The next four sections: one-off comparisons whose scripts have left benchmarks/ (docs/benchmarks.md names the
    # commits that hold them); their texts describe the runs recorded, with the code of that time.
    lines += speed_up_section(
        [r for r in records if r["kind"] == "allocator"], "Allocator", ["glibc default", "freed memory kept"],
        ["Training steps per second of each config with glibc's default allocator and with",
         "`keep_freed_memory` (lightning_meta/runtime.py), which train.py applies."])
    lines += speed_up_section(
        [r for r in records if r["kind"] == "native_batch_norm"], "Batch norm kernel",
        ["tensor operations", "native kernel"],
        ["Training steps per second of the learners that do not differentiate through their inner steps, with",
         "MetaBatchNorm in plain tensor operations (exact to every order under vmap) and through PyTorch's native",
         "kernel (exact to first order), which they use."])
    lines += speed_up_section(
        [r for r in records if r["kind"] == "metanet_generators"], "Meta Networks' meta-learners",
        ["autograd (before)", "coordinate-wise (now)"],
        ["Training steps per second of Meta Networks with its meta-learners d (an LSTM) and m (an MLP) run on every",
         "weight coordinate through nn.LSTMCell and nn.Sequential under autograd, as before, and as the chunked",
         "coordinate-wise networks with hand-written backward passes (lightning_meta/algorithms/coordinatewise.py)."])
    lines += speed_up_section(
        [r for r in records if r["kind"] == "metanet_pieces"], "Meta Networks' m by pieces",
        ["layers in chunks (before)", "by pieces (now)"],
        ["Training steps per second of Meta Networks with its MLP m computed through its layers over chunks of",
         "coordinates (coordinatewise.py at commit 76620d3) and by pieces along the lines its inputs lie on (now),",
         "in one process, the two taking turns step by step (benchmarks/timing.py, `compare_interleaved`)."])
    scaling = [r for r in records if r["kind"] == "ddp_bf16"]
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
    predictions = [r for r in records if r["kind"] == "predict"]
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
    lines += config_speed_section([r for r in records if r["kind"] == "config_speed"])
    throughput = [r for r in records if r["kind"] == "throughput"]
    if throughput:
        lines += ["## Throughput", "",
                  "| algorithm | episodes | path | unit | per second | hardware | date |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in throughput:
            unit = r.get("unit", "training episodes")
            rates = r.get("rates") or r["episodes_per_second"]
            for path, value in rates.items():
                lines.append(f"| {r['algorithm']} | {r['ways']}-way {r['shots']}-shot | {path} | {unit} | "
                             f"{value:.2f} | {r['hardware']} | {r['date']} |")
        lines += commands(throughput)
    return "\n".join(lines)


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
    """The Omniglot table of ``benchmarks/table.py``: one row per algorithm, and its throughput at 5-way 1-shot."""
    lines = ["## Omniglot table", "",
             "Every algorithm trained within the stated budget per config (`benchmarks/table.py`), tested on the same",
             f"{table[0]['test_episodes']} test episodes of each shape (Omniglot vinyals split); mean ± 95% CI, the "
             "paper's number in brackets.", "",
             *table_header("trained", "budget", "hardware", "date")]
    for r in table:
        cells = []
        for shape in TABLE_SHAPES:
            paper = f" ({r['paper'][shape]})" if r["paper"].get(shape) else ""
            cells.append(f"**{table_cell(r, shape)}**{paper}" if shape in r["cells"] else "–")
        name = f"[{r['algorithm']}](#accuracy-by-instance)" if r["algorithm"] == "mann" else r["algorithm"]
        trained = "; ".join(f"{t['config']}: {t['steps']} steps, {t['minutes']:.1f} min" for t in r["trainings"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {trained} | {r['budget']} | {r['hardware']} | "
                     f"{r['date']} |")
    lines += ["", "Throughput at 5-way 1-shot (from the runs above: training without validation, and the 5w1s test):",
              "", "| algorithm | training episodes per second | test episodes per second |", "| --- | --- | --- |"]
    for r in table:
        rates = [r["throughput"].get(k) for k in ("training episodes", "test episodes")]
        lines.append(f"| {r['algorithm']} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in rates) + " |")
    lines += ["", "Commands:", ""]
    for r in table:
        lines.append(f"- {r['algorithm']}: `{r['command']}`; trained by "
                     + "; ".join(f"`{t['command']}`" for t in r["trainings"]))
    return lines + [""]


def with_readme_table(readme: str, table: list[dict]) -> str:
    """``readme`` with the block between the ``README_TABLE`` markers replaced by the Omniglot table: the cells and
    the command that reproduces each row (RESULTS.md has the rest: steps, minutes, the train.py commands)."""
    begin, end = README_TABLE
    if readme.count(begin) != 1 or readme.count(end) != 1:
        raise SystemExit(f"{README} needs one line {begin!r} and one {end!r} around its Omniglot table")
    head, rest = readme.split(begin)
    tail = rest.split(end)[1]
    lines = table_header("budget", "CPU", "reproduce")
    for r in table:
        cells = [table_cell(r, shape) if shape in r["cells"] else "–" for shape in TABLE_SHAPES]
        cpu = r["hardware"].split(", ")[0]
        lines.append(f"| {r['algorithm']} | " + " | ".join(cells) + f" | {r['budget']} | {cpu} | `{r['command']}` |")
    dates = sorted({r["date"] for r in table})
    setups = sorted({r["hardware"].partition(", ")[2] for r in table})  # threads, torch and Python
    lines += ["", f"Omniglot vinyals split, {table[0]['test_episodes'] if table else 0} test episodes per cell, mean ± "
              f"95% CI (%); {'; '.join(setups) or '–'}; {', '.join(dates) or '–'}. The papers' numbers, training "
              "steps and minutes: RESULTS.md."]
    return "\n".join([head + begin, "", *lines, "", end]) + tail


def commands(records: list[dict]) -> list[str]:
    lines = ["", "Commands:", ""]
    for r in records:
        steps = f", {r['inner_steps']} inner steps" if r.get("inner_steps") is not None else ""
        lines.append(f"- {r['algorithm']} {r['ways']}w{r['shots']}s{steps}: `{r['command']}`")
        if r.get("note"):
            lines.append(f"  {r['note']}")
    return lines + [""]
