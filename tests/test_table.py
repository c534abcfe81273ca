"""benchmarks/table.py and benchmarks/headline.py end to end with tiny budgets on the synthetic set, into records and
a RESULTS.md of their own."""

import json
import os
import re
import subprocess
import sys

import torch
import yaml
from test_cli import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402
from results import README_TABLE, TABLE_PARTS  # noqa: E402


def run(script: str, *args: str, folder) -> subprocess.CompletedProcess:
    paths = [str(ROOT / "tests" / "steady_probe"), os.environ.get("PYTHONPATH")]  # a probe of steady speed
    env = {**os.environ, "LIGHTNING_META_RESULTS": str(folder), "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    command = [sys.executable, str(ROOT / "benchmarks" / script), *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_table_is_trained_tested_recorded_and_resumed(tmp_path):
    table = ["table.py", "--algorithms", "protonet", "mann", "--minutes", "0.1", "--test_episodes", "10",
             "--warmup", "1", "--data", "SyntheticDataModule", "--log_root", str(tmp_path / "logs"),
             "--model.lr", "0.0005", "--data.val_episodes", "10"]
    run(*table, folder=tmp_path)
    records = json.loads((tmp_path / "results.json").read_text())
    results.check(records)
    assert {r["machine"]["probe_ms"] for r in records} == {100.0}  # tests/steady_probe
    assert [r["config"] for r in records] == ["proto.yaml", "proto_5shot.yaml", "mann.yaml"]
    by_config = {r["config"]: r for r in records}
    assert sorted(by_config["proto.yaml"]["cells"]) == ["20w1s", "5w1s"]
    assert sorted(by_config["proto_5shot.yaml"]["cells"]) == ["20w5s", "5w5s"]
    assert sorted(by_config["mann.yaml"]["cells"]) == ["5w1s", "5w5s"]
    for r in records:
        config = yaml.safe_load((ROOT / "configs" / r["config"]).read_text())
        data = config["data"]["init_args"]
        assert r["train_shape"] == {"ways": data["n_way"], "shots": data["k_shot"], "queries": data["n_query"],
                                    "tasks": data.get("tasks_per_batch", 1)}
        assert r["batch_norm"] == config["model"].get("init_args", {}).get("batch_norm", "none" if r["algorithm"]
                                                                           == "mann" else "running")
        assert r["settings"] == ["--data", "SyntheticDataModule", "--model.lr", "0.0005", "--data.val_episodes", "10"]
        assert 0 < r["steps"] < config["trainer"]["max_steps"]  # stopped by the budget, not by max_steps
        assert all(r["minutes"][k] > 0 for k in ("train", "validation", "test"))
        assert "--trainer.callbacks.budget 0.1" in r["train_command"] and "max_time" not in r["train_command"]
        assert all(0 <= acc <= 100 and ci95 >= 0 for acc, ci95 in r["cells"].values())
        saved = tmp_path / "logs" / r["config"].removesuffix(".yaml") / "version_0" / "config.yaml"
        assert yaml.safe_load(saved.read_text())["model"]["init_args"]["lr"] == 0.0005  # the setting reached it
    markdown = (tmp_path / "RESULTS.md").read_text()
    cell = r"\*\*\d+\.\d\d ± \d+\.\d\d\*\*"
    assert re.search(rf"\| protonet \| proto\.yaml \| 60-way 1-shot, 5 queries \| running \| 32-true \| {cell} "
                     rf"\(98\.8\) \| – \| {cell} \(96\.0\) \| – \|", markdown)
    assert f"Commit {records[0]['commit'][:12]}" in markdown
    missing = next(line for line in markdown.splitlines() if line.startswith("Not yet measured at this commit"))
    assert missing.startswith("Not yet measured at this commit on this machine: matching.yaml")
    assert "meta_lstm_5shot.yaml" in missing and "baseline" not in missing  # only the part begun here

    again = run(*table, folder=tmp_path)  # resumed: everything is recorded at this commit on this machine
    assert again.stdout.count("recorded at this commit on this machine, skipped") == 3
    assert json.loads((tmp_path / "results.json").read_text()) == records
    run(*table[:2], "mann", *table[4:], "--rerun", folder=tmp_path)
    records = json.loads((tmp_path / "results.json").read_text())
    assert len(records) == 4 and records[3]["config"] == "mann.yaml" and records[3]["supersedes"] == [3]


def test_the_readme_shows_each_part_of_the_table_once_one_commit_covers_its_configs(tmp_path, monkeypatch):
    """Until one commit and machine cover every config of the meta-learners' part, the README keeps the table made
    before the protocol; then it shows that commit's table. The baselines' part follows, from its own commit, once
    one commit and machine cover its configs."""
    for name, file in (("JSON", "results.json"), ("MARKDOWN", "RESULTS.md"), ("README", "README.md")):
        monkeypatch.setattr(results, name, tmp_path / file)
    begin, end = README_TABLE
    (tmp_path / "README.md").write_text(f"# Intro\n\n{begin}\n| stale | row |\n{end}\n\n## After\n")
    machine = {"cpu": "Test CPU", "isa": "AVX2", "threads": 2, "accelerator": "CPU only", "torch": "2", "python": "3",
               "probe_ms": 40.0}
    def record(algorithm: str, config: str, shapes: list[str], commit: str, acc: float) -> str:
        results.record({
            "kind": "table", "algorithm": algorithm, "config": config, "config_sha256": "0" * 64,
            "dataset": "omniglot", "split": "vinyals", "settings": [], "train_seed": 0, "eval_seed": 0,
            "precision": "32-true", "batch_norm": "transductive",
            "train_shape": {"ways": 5, "shots": 1, "queries": 15, "tasks": 1}, "steps": 100,
            "minutes": {"train": 10.0, "validation": 1.0, "test": 1.0}, "test_episodes": 1000,
            "ways": None, "shots": None, "within_alphabet": False, "cells": {s: [acc, 0.3] for s in shapes},
            "paper": {}, "budget": "10 min of training", "throughput": {}, "train_command": "python train.py",
            "commit": commit, "machine": machine, "date": "2026-12-07", "command": "python benchmarks/table.py",
        })  # fmt: skip
        return (tmp_path / "README.md").read_text()

    meta = [(a, config, shapes) for a, plan in TABLE_PARTS["meta-learners"].items() for config, shapes in plan]
    proto_row = "| protonet | proto.yaml | 90.00 ± 0.30 | – | 90.00 ± 0.30 | – | 5-way 1-shot, 15 queries |"
    for n, (algorithm, config, shapes) in enumerate(meta):
        readme = record(algorithm, config, shapes, "1" * 40, 90.0 + n / 10)
        assert (proto_row in readme) is (n == len(meta) - 1)
        assert ("Made before the results protocol" in readme) is (n < len(meta) - 1)
    assert readme.startswith(f"# Intro\n\n{begin}\n") and readme.endswith(f"{end}\n\n## After\n")
    assert "stale" not in readme and "commit 111111111111" in readme
    assert "Meta-learners: Omniglot vinyals split" in readme

    baselines = [(a, config, shapes) for a, plan in TABLE_PARTS["pretrain-and-evaluate baselines"].items()
                 for config, shapes in plan]
    for n, (algorithm, config, shapes) in enumerate(baselines):
        readme = record(algorithm, config, shapes, "2" * 40, 80.0)
        assert (f"| {algorithm} | {config} | 80.00 ± 0.30 | 80.00 ± 0.30 |" in readme) is (n == len(baselines) - 1)
        assert proto_row in readme  # the meta-learners' table stays
    assert readme.index(proto_row) < readme.index("| simpleshot | simpleshot.yaml |")
    assert "Pretrain-and-evaluate baselines: Omniglot vinyals split" in readme and "commit 222222222222" in readme


def test_headline_trains_the_seeds_a_target_needs_and_tests_each_on_fresh_episodes(tmp_path):
    headline = ["headline.py", "--algorithms", "protonet", "--minutes", "0.05", "--test_episodes", "10",
                "--data", "SyntheticDataModule", "--data.noise", "2.0", "--data.val_episodes", "10",
                "--log_root", str(tmp_path / "logs")]
    # noise 2.0: far from 100% after seconds of training, so two sets of test episodes give two figures
    run(*headline, folder=tmp_path)
    records = json.loads((tmp_path / "results.json").read_text())
    results.check(records)
    first = records[0]
    assert [r["train_seed"] for r in records] == list(range(results.seeds_needed(first, 98.0)))
    for seed, r in enumerate(records):
        saved = tmp_path / "logs" / "protonet" / "proto" / f"version_{seed}" / "config.yaml"
        assert yaml.safe_load(saved.read_text())["seed_everything"] == seed
        assert r["eval_seed"] == 0 and r["fresh"]["eval_seed"] == 1 and r["target"] == 98.0
        assert (r["acc"], r["ci95"]) != (r["fresh"]["acc"], r["fresh"]["ci95"])  # other episodes, other figures
    weights = [torch.load(next((tmp_path / "logs" / "protonet" / "proto" / f"version_{seed}" / "checkpoints").glob(
        "*.ckpt")), weights_only=False)["state_dict"] for seed in (0, 1)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # another seed, another model
    markdown = (tmp_path / "RESULTS.md").read_text()
    mean = sum(r["acc"] for r in records) / len(records)
    machine_line = next(line for line in markdown.splitlines() if "speed probe (`timing.speed_probe`)" in line)
    probes = [r["machine"]["probe_ms"] for r in records]
    assert f"{min(probes):.1f}" in machine_line and f"{max(probes):.1f}" in machine_line
    row = next(line for line in markdown.splitlines() if line.startswith("| protonet | proto.yaml |"))
    assert f"**{mean:.2f}**" in row and ("| **met** |" if mean >= 98.0 else "| not met |") in row
    assert f"seed 1: {records[1]['acc']:.2f} ± {records[1]['ci95']:.2f} [{records[1]['fresh']['acc']:.2f}" in row
    again = run(*headline, folder=tmp_path)  # resumed: nothing left to train
    assert json.loads((tmp_path / "results.json").read_text()) == records and "seed" not in again.stdout


def test_tune_scores_each_variant_on_validation_episodes_and_never_tests(tmp_path):
    tune = ["tune.py", "--config", "proto.yaml", "--minutes", "0.05", "--data", "SyntheticDataModule",
            "--data.val_episodes", "10", "--log_root", str(tmp_path / "logs"), "--variants", "as shipped:",
            "slower: --model.lr 0.0001"]
    run(*tune, folder=tmp_path)
    records = json.loads((tmp_path / "results.json").read_text())
    results.check(records)
    assert [(r["variant"], r["variant_settings"]) for r in records] == [("as shipped", []),
                                                                       ("slower", ["--model.lr", "0.0001"])]
    for version, r in enumerate(records):
        assert r["kind"] == "tuning" and r["val_episodes"] == 10 and 0 <= r["acc"] <= 100
        saved = yaml.safe_load((tmp_path / "logs" / "proto" / f"version_{version}" / "config.yaml").read_text())
        assert saved["model"]["init_args"]["lr"] == (0.001 if version == 0 else 0.0001)
    log = (tmp_path / "logs" / "proto.log").read_text()
    assert log.count("val/acc") == 2 and "test/" not in log
    assert "## Recipes chosen on validation episodes" in (tmp_path / "RESULTS.md").read_text()
