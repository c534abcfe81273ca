"""The benchmark scripts' bookkeeping: which test figures they can take from train.py's own closing test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import results  # noqa: E402
from results import TrainedRun, parse_dataset, parse_test_metrics  # noqa: E402

TRAIN_PY_OUTPUT = """Testing DataLoader 0: 100%
test/acc 69.31 ± 0.59  (omniglot vinyals test split: 1000 episodes, 5-way 1-shot, 9 queries per class)
test/acc_instance_1 21.48 ± 0.52
test/acc_instance_10 73.70 ± 0.63
"""


def test_train_py_test_figures_are_read_every_printed_figure():
    assert parse_test_metrics(TRAIN_PY_OUTPUT) == {"acc": (69.31, 0.59), "acc_instance_1": (21.48, 0.52),
                                             "acc_instance_10": (73.70, 0.63)}


@pytest.mark.parametrize("line, dataset", [
    ("test/acc 94.61 ± 0.32  (omniglot/vinyals, 5-way 1-shot, 1000 episodes)", ["omniglot", "vinyals"]),
    ("test/acc 55.02 ± 0.81  (cifar_fs/cifar100_jpeg_q75.zip, 5-way 1-shot, 1000 episodes)",
     ["cifar_fs", "cifar100_jpeg_q75.zip"]),
    ("test/mse 0.6310 ± 0.0520  (sinusoid, K=10, 100 query points, 30 tasks)", ["sinusoid", ""]),
])  # fmt: skip
def test_the_data_set_is_read_from_the_test_line(line, dataset):
    assert parse_dataset(f"Testing DataLoader 0: 100%\n{line}\ntest/acc_instance_1 21.48 ± 0.52\n") == dataset


@pytest.fixture
def run(tmp_path: Path) -> TrainedRun:
    """A finished run of a 5-way 1-shot config tested on 1,000 episodes (eval shape left to the training one)."""
    folder = tmp_path / "proto" / "version_0"
    (folder / "checkpoints").mkdir(parents=True)
    data = {"n_way": 5, "k_shot": 1, "eval_n_way": None, "eval_k_shot": None, "test_episodes": 1000}
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"init_args": data}}))
    return TrainedRun("proto.yaml", [], 1.0, 10, "protonet", folder / "checkpoints" / "best.ckpt",
                      tmp_path / "proto.log", parse_test_metrics(TRAIN_PY_OUTPUT), ["omniglot", "vinyals"])


@pytest.mark.parametrize("overrides, repeats", [
    ((), True),
    (("--data.eval_n_way", "5", "--data.eval_k_shot", "1", "--data.test_episodes", "1000"), True),
    (("--data.eval_n_way", "20", "--data.eval_k_shot", "1", "--data.test_episodes", "1000"), False),
    (("--data.eval_n_way", "5", "--data.eval_k_shot", "5"), False),
    (("--data.test_episodes", "200"), False),
    (("--model.eval_inner_steps", "10"), False),
])
def test_only_the_configs_own_test_is_taken_from_train_py(run, overrides, repeats):
    assert run.is_closing_test(overrides) is repeats
    if repeats:
        metrics, note, _ = run.test_all(*overrides)
        assert metrics["acc"] == (69.31, 0.59) and "closing test" in note


def test_a_run_recorded_without_its_closing_test_is_tested_again(run):
    run.closing_test = {}
    assert not run.is_closing_test(())


def test_settings_given_for_training_are_kept_and_given_to_later_tests(run, monkeypatch):
    run.overrides = ["--trainer.precision", "bf16-mixed"]
    run.save()
    loaded = TrainedRun.load(run.best.parents[1])
    assert loaded.overrides == ["--trainer.precision", "bf16-mixed"]
    calls = []
    monkeypatch.setattr(results, "train_py", lambda *args, log: calls.append(args) or TRAIN_PY_OUTPUT)
    loaded.test_all("--data.eval_n_way", "20")
    (args,) = calls
    assert args[args.index("--trainer.precision") + 1] == "bf16-mixed"
    assert args[args.index("--data.eval_n_way") + 1] == "20" and args[args.index("--ckpt_path") + 1] == str(run.best)


def test_config_speed_takes_turns_and_records_the_median_of_each_variant(tmp_path):
    """benchmarks/config_speed.py against a stand-in train.py whose n-th run prints a rate from a list: each variant's
    settings, environment and tree reach its runs, the variants alternate, and the medians (not the means) are
    recorded, with each variant's ratio to the first in RESULTS.md."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "train.py").write_text(
        "import os, sys\n"
        "from pathlib import Path\n"
        "log = Path('runs.txt')\n"
        "runs = log.read_text().split() if log.exists() else []\n"
        "variant = 'b' if '--model.meta_batch' in sys.argv else 'a'\n"
        "log.write_text(' '.join(runs + [variant + os.environ['OFFSET']]))\n"
        "rate = [1, 9, 2, 3, 4, 30][len(runs)] + float(os.environ['OFFSET'])\n"
        "print(f'timed: {rate} training steps per second')\n")
    out = tmp_path / "results"
    out.mkdir()
    script = Path(results.ROOT, "benchmarks", "config_speed.py")
    run = subprocess.run([sys.executable, str(script), "--configs", "proto.yaml", "--repeats", "3", "--variants",
                          f"a: tree={tree} OFFSET=0", f"b: tree={tree} OFFSET=100 --model.meta_batch loop"],
                         env={**os.environ, "LIGHTNING_META_RESULTS": str(out)}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tree / "runs.txt").read_text() == "a0 b100 a0 b100 a0 b100"
    (entry,) = json.loads((out / "results.json").read_text())
    assert entry["rates"] == {"a": 2.0, "b": 109.0}  # a: 1, 2, 4; b: 109, 103, 130
    assert entry["all_rates"] == {"a": [1.0, 2.0, 4.0], "b": [109.0, 103.0, 130.0]}
    assert entry["variants"]["b"].startswith("OFFSET=100 --model.meta_batch loop tree at commit")
    assert (entry["algorithm"], entry["dataset"], entry["config"]) == ("protonet", "omniglot", "proto.yaml")
    assert "| proto.yaml | 2.000 | 109.000 | 54.50 |" in (out / "RESULTS.md").read_text()


def test_a_record_names_its_commit_clean_when_only_the_records_changed(tmp_path, monkeypatch):
    """results.commit() in a scratch repository: the files record() writes (results.json, RESULTS.md, README.md)
    do not make the tree dirty; any other tracked change does."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    (tmp_path / "benchmarks").mkdir()
    paths = [tmp_path / "benchmarks" / "results.json", tmp_path / "RESULTS.md", tmp_path / "README.md",
             tmp_path / "code.py"]
    for path in paths:
        path.write_text("before\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    head = git("rev-parse", "HEAD")
    monkeypatch.setattr(results, "ROOT", tmp_path)
    monkeypatch.setattr(results, "JSON", paths[0])
    monkeypatch.setattr(results, "MARKDOWN", paths[1])
    monkeypatch.setattr(results, "README", paths[2])
    for path in paths[:3]:
        path.write_text("after\n")
    assert results.commit() == head
    paths[3].write_text("after\n")
    assert results.commit() == head + "+dirty"
