"""Benchmark records: ``benchmarks/results.json`` (a list of records) and ``RESULTS.md`` made from it.

A new measurement replaces the record with the same kind, algorithm, dataset, split, ways, shots and
within_alphabet, so re-running a benchmark updates its rows and leaves the others alone.
"""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
JSON = ROOT / "benchmarks" / "results.json"
MARKDOWN = ROOT / "RESULTS.md"
IDENTITY = ("kind", "algorithm", "dataset", "split", "ways", "shots", "within_alphabet")

PAPER = {  # published test accuracy (%) by (algorithm, dataset, ways, shots); algorithms.md
    ("protonet", "omniglot", 5, 1): 98.8, ("protonet", "omniglot", 5, 5): 99.7,
    ("protonet", "omniglot", 20, 1): 96.0, ("protonet", "omniglot", 20, 5): 98.9,
}  # fmt: skip


def hardware() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    threads = torch.get_num_threads()
    return f"{cpu}, {threads} threads, CPU only, torch {torch.__version__}, Python {platform.python_version()}"


def today() -> str:
    return datetime.date.today().isoformat()


def command_line(args: list[str]) -> str:
    return shlex.join(["python", *[str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT)) else a for a in args]])


def this_command() -> str:
    return command_line(sys.argv)


def record(*entries: dict) -> None:
    """Adds (or replaces) records and rewrites RESULTS.md."""
    records = json.loads(JSON.read_text()) if JSON.exists() else []
    for entry in entries:
        records = [r for r in records if tuple(r.get(k) for k in IDENTITY) != tuple(entry.get(k) for k in IDENTITY)]
        records.append(entry)
    records.sort(key=lambda r: tuple(str(r.get(k)) for k in IDENTITY))
    JSON.write_text(json.dumps(records, indent=1) + "\n")
    MARKDOWN.write_text(render(records))


def render(records: list[dict]) -> str:
    lines = ["# Results", "",
             "Made by the scripts in `benchmarks/` from `benchmarks/results.json`; do not edit by hand.",
             "Accuracy is the mean query accuracy over the test episodes with its 95% confidence interval",
             "(1.96 · s / √n), in percent. Every row names the command that produced it.", ""]
    accuracy = [r for r in records if r["kind"] == "accuracy"]
    if accuracy:
        lines += ["## Accuracy", "",
                  "| algorithm | dataset / split | episodes | test acc (%) | paper | test episodes | trained "
                  "| hardware | date |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in accuracy:
            within = ", within alphabet" if r.get("within_alphabet") else ""
            paper = PAPER.get((r["algorithm"], r["dataset"], r["ways"], r["shots"]))
            lines.append(
                f"| {r['algorithm']} | {r['dataset']} / {r['split']} | {r['ways']}-way {r['shots']}-shot{within} | "
                f"**{r['acc']:.2f} ± {r['ci95']:.2f}** | {paper if paper else '–'} | {r['test_episodes']} | "
                f"{r['train_steps']} steps, {r['train_minutes']:.1f} min | {r['hardware']} | {r['date']} |")
        lines += commands(accuracy)
    throughput = [r for r in records if r["kind"] == "throughput"]
    if throughput:
        lines += ["## Throughput", "",
                  "| algorithm | episodes | path | training episodes / s | hardware | date |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in throughput:
            for path, value in r["episodes_per_second"].items():
                lines.append(f"| {r['algorithm']} | {r['ways']}-way {r['shots']}-shot | {path} | {value:.2f} | "
                             f"{r['hardware']} | {r['date']} |")
        lines += commands(throughput)
    return "\n".join(lines)


def commands(records: list[dict]) -> list[str]:
    lines = ["", "Commands:", ""]
    for r in records:
        lines.append(f"- {r['algorithm']} {r['ways']}w{r['shots']}s: `{r['command']}`")
        if r.get("note"):
            lines.append(f"  {r['note']}")
    return lines + [""]
