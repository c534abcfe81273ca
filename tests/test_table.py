"""benchmarks/table.py end to end with tiny budgets on the synthetic set, into a RESULTS.md of its own."""

import json
import os
import re
import subprocess
import sys

import yaml
from test_cli import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from results import README_TABLE  # noqa: E402


def test_the_table_is_trained_tested_and_written(tmp_path):
    env = {**os.environ, "LIGHTNING_META_RESULTS": str(tmp_path)}
    begin, end = README_TABLE
    (tmp_path / "README.md").write_text(f"# Intro\n\n{begin}\n| stale | row |\n{end}\n\n## After\n")
    command = [sys.executable, str(ROOT / "benchmarks" / "table.py"), "--algorithms", "protonet", "mann", "--minutes",
               "0.1", "--test_episodes", "10", "--warmup", "1", "--data", "SyntheticDataModule",
               "--log_root", str(tmp_path / "logs"), "--model.lr", "0.0005"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    records = {r["algorithm"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert sorted(records) == ["mann", "protonet"]
    assert sorted(records["protonet"]["cells"]) == ["20w1s", "20w5s", "5w1s", "5w5s"]
    assert sorted(records["mann"]["cells"]) == ["5w1s", "5w5s"]
    assert [t["config"] for t in records["protonet"]["trainings"]] == ["proto.yaml", "proto_5shot.yaml"]
    for record in records.values():
        assert all(0 <= acc <= 100 and ci95 >= 0 for acc, ci95 in record["cells"].values())
        assert all("--trainer.max_time 00:00:00:06" in t["command"] for t in record["trainings"])
        for t in record["trainings"]:  # stopped by the 6 s budget, not by the config's max_steps
            config = yaml.safe_load((ROOT / "configs" / t["config"]).read_text())
            assert 0 < t["steps"] < config["trainer"]["max_steps"]
        assert record["throughput"]["test episodes"] > 0
    table = (tmp_path / "RESULTS.md").read_text()
    protonet = [line for line in table.splitlines() if line.startswith("| protonet |")]
    mann = [line for line in table.splitlines() if line.startswith(("| [mann]", "| mann |"))]
    assert len(protonet) == len(mann) == 2  # a row in the table and one in the throughput table
    cell = r"\*\*\d+\.\d\d ± \d+\.\d\d\*\*"
    assert re.match(rf"\| protonet \| {cell} \(98\.8\) \| {cell} \(99\.7\) \| {cell} \(96\.0\) \| {cell} \(98\.9\) \|",
                    protonet[0])
    assert re.match(rf"\| \[mann\]\(#accuracy-by-instance\) \| {cell} \| {cell} \| – \| – \|", mann[0])
    assert re.match(r"\| protonet \| \d+\.\d\d \| \d+\.\d\d \|$", protonet[1])
    assert "- protonet: `python benchmarks/table.py --algorithms protonet mann --minutes 0.1" in table
    log = (tmp_path / "logs" / "protonet.log").read_text()
    assert log.count("$ python train.py") == 4  # 2 trainings (each tested on its own shape), 2 more tests
    commands = [line for line in log.splitlines() if line.startswith("$ python train.py")]
    assert all("--data SyntheticDataModule --model.lr 0.0005" in command for command in commands)
    for config in ("proto", "proto_5shot", "mann"):  # the setting given to table.py reached every training
        saved = tmp_path / "logs" / config / "version_0" / "config.yaml"  # the training's run folder
        assert yaml.safe_load(saved.read_text())["model"]["init_args"]["lr"] == 0.0005
    readme = (tmp_path / "README.md").read_text()  # the README's copy: the same cells, the rest kept
    assert readme.startswith(f"# Intro\n\n{begin}\n") and readme.endswith(f"{end}\n\n## After\n")
    assert "stale" not in readme
    for name, record in records.items():
        row = next(line for line in readme.splitlines() if line.startswith(f"| {name} |"))
        cells = [f"{record['cells'][s][0]:.2f} ± {record['cells'][s][1]:.2f}" if s in record["cells"] else "–"
                 for s in ("5w1s", "5w5s", "20w1s", "20w5s")]
        assert row.split(" | ")[1:5] == cells
        assert "`python benchmarks/table.py --algorithms protonet mann --minutes 0.1" in row
