"""benchmarks/gpu_check.py --dry_run: the GPU check's commands run on the CPU, tiny, and write their records aside
(never into benchmarks/results.json)."""

import json
import subprocess
import sys

from test_cli import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402


def test_the_gpu_check_runs_dry_on_the_cpu_and_records_every_part(tmp_path):
    project_records = results.JSON.read_text()
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry_run", "--configs", "maml.yaml",
               "--log_root", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert results.JSON.read_text() == project_records
    records = json.loads((tmp_path / "records" / "results.json").read_text())
    results.check(records)
    runs = [(r["part"], r["config"], r["precision"]) for r in records]
    recipes = ["proto.yaml", "maml.yaml", "anil.yaml", "metasgd.yaml", "maml_plus_plus.yaml", "proto_cifar_fs.yaml",
               "baseline_pp_cifar_fs.yaml", "simpleshot_cifar_fs.yaml", "r2d2_cifar_fs.yaml"]
    assert runs == [("precision", "maml.yaml", precision) for precision in ("32-true", "bf16-mixed", "16-mixed")] + \
        [("ddp", "maml.yaml", "32-true")] + [("recipes", config, "32-true") for config in recipes]
    for r in records:
        assert r["steps"] == 2 and r["training_steps_per_second"] > 0 and 0 <= r["acc"] <= 100
        assert r["machine"]["accelerator"] == "CPU only"
    ddp = [r for r in records if r["part"] == "ddp"]
    assert all(r["settings"][r["settings"].index("--trainer.devices") + 1] == "2" for r in ddp)
    recipe = {r["config"]: r["settings"] for r in records if r["part"] == "recipes"}
    assert recipe["maml.yaml"][:6] == ["--trainer.max_steps", "60000", "--data.n_query", "1", "--model.lr_final", "null"]
    assert recipe["maml_plus_plus.yaml"][:2] == ["--trainer.max_steps", "75000"]
    assert all(recipe[config][:2] == ["--model.backbone", "resnet12"] for config in recipes if "cifar_fs" in config)
    markdown = (tmp_path / "records" / "RESULTS.md").read_text()
    assert "## GPU check" in markdown and "| ddp | maml.yaml | 32-true | 2 | 2 |" in markdown


def test_the_gpu_check_refuses_to_start_without_cuda_unless_dry():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "CUDA is not available here" in result.stderr
