"""The benchmark scripts' bookkeeping: which test figures they can take from train.py's own closing test."""

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
        metrics, note = run.test_all(*overrides)
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
