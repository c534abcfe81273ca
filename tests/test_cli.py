"""train.py end to end, as a user runs it: a subprocess per command."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
OMNIGLOT_TINY = TINY + ["--data.n_way", "5", "--data.batches_per_epoch", "4", "--data.val_episodes", "10",
                        "--data.test_episodes", "20", "--data.eval_tasks_per_batch", "10"]


def train(*args, data_root=None, log_root=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if data_root is not None:
        env["LIGHTNING_META_DATA"] = str(data_root)
    command = [sys.executable, str(ROOT / "train.py"), *map(str, args)]
    if log_root is not None:
        command += ["--log_root", str(log_root)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_choosing_a_recipe_validates_the_best_checkpoint_and_never_tests(tmp_path):
    """``--test_after_fit false``: after training, the best checkpoint is validated instead of tested, and its
    val/acc is the score ModelCheckpoint chose it by (kept in last.ckpt); no test figure is printed."""
    out = ok(train("--config", "proto.yaml", "--data", "SyntheticDataModule", "--trainer.max_steps", 4,
                   "--data.batches_per_epoch", 2, "--data.val_episodes", 10, "--data.test_episodes", 10,
                   "--data.eval_tasks_per_batch", 5, "--test_after_fit", "false", *TINY, log_root=tmp_path))
    found = re.search(r"^val/acc (\d+\.\d\d) ± \d+\.\d\d  \(.*, 5-way 1-shot, 10 episodes\)$", out, re.M)
    assert found and "test/" not in out
    callbacks = state(tmp_path / "proto" / "version_0" / "checkpoints" / "last.ckpt")["callbacks"]
    score = next(v["best_model_score"] for k, v in callbacks.items() if k.startswith("ModelCheckpoint"))
    assert found[1] == f"{float(score):.2f}"


def test_fit_test_resume_and_test_only_on_omniglot(data_root, tmp_path):
    logs = tmp_path / "logs"
    out = ok(train("--config", "proto.yaml", "--trainer.max_steps", 6, "--checkpoint_every", 2, *OMNIGLOT_TINY,
                   data_root=data_root, log_root=logs))
    assert re.search(r"^test/acc \d+\.\d\d ± \d+\.\d\d  \(omniglot/vinyals, 5-way 1-shot, 20 episodes\)$", out, re.M)
    run = logs / "proto" / "version_0"
    assert (run / "config.yaml").exists() and list(run.glob("events.out.tfevents.*"))
    assert state(run / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1

    ok(train("--config", "proto.yaml", "--trainer.max_steps", 10, "--ckpt_path", "last", *OMNIGLOT_TINY,
             data_root=data_root, log_root=logs))
    assert not (logs / "proto" / "version_1").exists()  # resumed into the same run folder
    assert (run / "config_resumed1.yaml").exists() and (run / "config.yaml").exists()
    assert state(run / "checkpoints" / "last.ckpt")["global_step"] == 10

    before = snapshot(logs)
    out = ok(train("--config", "proto.yaml", "--ckpt_path", run / "checkpoints" / "last.ckpt", "--test_only", "true",
                   *OMNIGLOT_TINY, data_root=data_root, log_root=logs))
    assert re.search(r"^test/acc \d+\.\d\d ± \d+\.\d\d  \(omniglot/vinyals", out, re.M)
    assert snapshot(logs) == before and not (ROOT / "config.yaml").exists()  # test-only writes nothing


def test_a_version_folder_is_claimed_by_creating_it(tmp_path, monkeypatch):
    """Two runs started at the same moment: the second listed the folders before the first created version_0, and
    still gets version_1. (Before, both chose version_0 and the second stopped on the first one's config.yaml.)"""
    from lightning_meta import cli  # this file's train() runs train.py as a subprocess

    (tmp_path / "version_0").mkdir()
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter([]))  # the listing taken before version_0 existed
    assert cli.claim_version(tmp_path) == 1
    assert (tmp_path / "version_1").is_dir()


def test_predict_first_goes_to_the_predict_command(monkeypatch):
    """``train.py predict ...`` (and ``lightning-meta predict ...``): the rest of the line goes to
    lightning_meta.predict.main, whose return value is the exit status."""
    import types

    from lightning_meta import cli

    calls = []
    fake = types.ModuleType("lightning_meta.predict")
    fake.main = lambda args: calls.append(args) or 3
    monkeypatch.setitem(sys.modules, "lightning_meta.predict", fake)
    assert cli.entry_point(["predict", "--ckpt_path", "best.ckpt", "--query", "predict"]) == 3
    assert calls == [["--ckpt_path", "best.ckpt", "--query", "predict"]]


def test_resume_mid_epoch_is_bitwise_exact(tmp_path):
    """12 steps in one run equal 7 steps, then resume, then 5 more (epochs of 5 steps: 7 is mid-epoch)."""
    common = ["--config", "proto_synthetic.yaml", "--data.batches_per_epoch", 5, "--checkpoint_every", 100, *TINY]
    ok(train(*common, "--trainer.max_steps", 12, log_root=tmp_path / "a"))
    ok(train(*common, "--trainer.max_steps", 7, log_root=tmp_path / "b"))
    ok(train(*common, "--trainer.max_steps", 12, "--ckpt_path", "last", log_root=tmp_path / "b"))
    a = state(tmp_path / "a" / "proto_synthetic" / "version_0" / "checkpoints" / "last.ckpt")
    b = state(tmp_path / "b" / "proto_synthetic" / "version_0" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    adam_a, adam_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(adam_a[i]["exp_avg"], adam_b[i]["exp_avg"]) for i in adam_a)


def test_same_config_and_seed_give_the_same_numbers(tmp_path):
    runs = [ok(train("--config", "proto_synthetic.yaml", "--trainer.max_steps", 5, *TINY, log_root=tmp_path / s))
            for s in ("a", "b")]
    line = [re.search(r"^test/acc .*$", r, re.M)[0] for r in runs]
    assert line[0] == line[1]


def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")} if folder.exists() else {}


def one_line_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def protonet_run(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    ok(train("--config", "proto_synthetic.yaml", "--trainer.max_steps", 2, *TINY, log_root=logs))
    return logs


BAD_INPUT = {
    "unknown key": (["--data.n_wya", 5], r"OmniglotDataModule has no setting 'n_wya'"),
    "wrong type": (["--model.lr", "fast"], r"setting 'lr' must be a float"),
    "negative lr": (["--model.lr", "-0.1"], r"model.lr must be positive"),
    "more ways than classes": (["--data.n_way", 5000], r"n_way = 5000 but the split has only 4112 classes"),
    "shots and queries over the drawings": (["--data.k_shot", 10, "--data.n_query", 15],
                                            r"k_shot \+ n_query = 25 but the smallest class has only 20 items"),
    "one way": (["--data.n_way", 1], r"need n_way >= 2"),
    "image too small": (["--data.image_size", 8], r"needs at least 16x16 pixels"),
    "MAML in inference mode": (["--config", "maml.yaml", "--trainer.inference_mode", "true"],
                               r"MAML takes gradients on the support set when it evaluates; "
                               r"set trainer.inference_mode: false"),
    "MAML output layer and ways differ": (["--config", "maml.yaml", "--data.n_way", 20],
                                          r"model.n_way is 5 but the data gives 20-way train episodes"),
    "Reptile without max_steps to anneal over": (["--config", "reptile.yaml", "--trainer.max_steps", -1],
                                                 r"lr_final anneals .* set max_steps"),
    "ProtoNet on regression data": (["--config", "maml_sinusoid.yaml", "--model", "ProtoNet"],
                                    r"ProtoNet learns classification episodes, but the data gives regression"),
    "zero lr": (["--model.lr", 0], r"model.lr must be positive"),
    "no shots": (["--data.k_shot", 0], r"need n_way >= 2, k_shot >= 1 and n_query >= 1 \(got \d+, 0, \d+\)"),
    "no queries": (["--data.n_query", 0], r"need n_way >= 2, k_shot >= 1 and n_query >= 1 \(got \d+, \d+, 0\)"),
    "no tasks per batch": (["--data.tasks_per_batch", 0], r"data.tasks_per_batch must be at least 1"),
    "unknown algorithm": (["--model", "Protonet2"],
                          r"unknown algorithm 'Protonet2' for --model; choose one of ANIL, Baseline, BaselinePlusPlus, MAML"),
    "unknown data module": (["--data", "Omni"], r"unknown data module 'Omni' for --data; choose one of .*Omniglot"),
    "missing config file": (["--config", "proto_typo.yaml"], r"config file proto_typo.yaml not found"),
    "mean without std": (["--data.mean", "[0.5]"], r"data.mean and data.std go together"),
    "test only without a checkpoint": (["--test_only", "true"], r"--test_only needs a checkpoint"),
    "resume a run that does not exist": (["--ckpt_path", "last"], r"no run of 'proto' with a last.ckpt"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_config_is_one_line_before_training(case, data_root, protonet_run):
    args, pattern = BAD_INPUT[case]
    config = [] if "--config" in args else ["--config", "proto.yaml"]
    before = snapshot(protonet_run)
    one_line_error(train(*config, *args, data_root=data_root, log_root=protonet_run), pattern)
    assert snapshot(protonet_run) == before


def test_data_root_without_data(tmp_path):
    result = train("--config", "proto.yaml", "--data.download", "false", data_root=tmp_path,
                   log_root=tmp_path / "logs")
    one_line_error(result, r"Omniglot not found.*data.download: true")
    assert not (tmp_path / "logs").exists()


def test_unknown_config_key_in_a_yaml_file(tmp_path):
    config = (ROOT / "configs" / "proto_synthetic.yaml").read_text().replace("n_query: 5", "n_queries: 5")
    (tmp_path / "typo.yaml").write_text(config)
    one_line_error(train("--config", tmp_path / "typo.yaml", log_root=tmp_path / "logs"), r"no setting 'n_queries'")


def test_yaml_syntax_error(tmp_path):
    config = (ROOT / "configs" / "proto_synthetic.yaml").read_text().replace("n_query: 5", "n_query: [5")
    (tmp_path / "broken.yaml").write_text(config)
    one_line_error(train("--config", tmp_path / "broken.yaml", log_root=tmp_path / "logs"), r"not valid YAML .*line")
    assert not (tmp_path / "logs").exists()


def test_the_settings_check_finds_nothing_wrong_in_the_shipped_configs():
    """check_settings names the problem where jsonargparse refuses a command line; in a config that jsonargparse
    takes it must find none, or it would blame a setting that is fine."""
    from lightning_meta import cli

    for config in sorted(cli.CONFIGS.glob("*.yaml")):
        cli.check_settings(["--config", str(config), "--model.lr", "-0.1"])


SETTINGS = {
    "a wrong type in a YAML": ({"lr: 0.001": "lr: fast"}, [], r"^ProtoNet setting 'lr' must be a float, not 'fast'$"),
    "a value outside a setting's few": ({}, ["--model", "MAML", "--model.meta_batch", "zzz"],
                                        r"^MAML setting 'meta_batch' must be one of 'vmap', 'loop', not 'zzz'$"),
    "a setting of the class chosen before": ({}, ["--model", "MAML", "--model.inner_lr", "0.1", "--model=ProtoNet",
                                                  "--model.init_args.inner_lr", "0.1"],
                                             r"^ProtoNet has no setting 'inner_lr'; check its spelling"),
    "an unknown class as a mapping": ({}, ["--data", "{class_path: Omni, init_args: {n_way: 5}}"],
                                      r"^unknown data module 'Omni' for --data; choose one of"),
}


@pytest.mark.parametrize("case", SETTINGS)
def test_the_settings_check_names_the_setting_at_fault(case, tmp_path):
    from lightning_meta import ConfigError, cli

    changes, args, message = SETTINGS[case]
    config = (ROOT / "configs" / "proto_synthetic.yaml").read_text()
    for old, new in changes.items():
        config = config.replace(old, new)
    (tmp_path / "config.yaml").write_text(config)
    with pytest.raises(ConfigError, match=message):
        cli.check_settings(["--config", str(tmp_path / "config.yaml"), *args])


def test_unwritable_log_folder(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    one_line_error(train("--config", "proto_synthetic.yaml", log_root=tmp_path / "a_file" / "logs"),
                   r"cannot write runs under --log_root .*a_file/logs \(Not a directory\)")
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_resuming_with_other_training_episodes_is_refused(protonet_run):
    before = snapshot(protonet_run)
    one_line_error(train("--config", "proto_synthetic.yaml", "--ckpt_path", "last", "--data.n_way", 3,
                         "--data.seed", 4, *TINY, log_root=protonet_run),
                   r"trained on other episodes than the config gives \(n_way 5 -> 3, seed 0 -> 4 in data\)")
    assert snapshot(protonet_run) == before


@pytest.mark.parametrize("damage", ["other algorithm", "other backbone", "truncated"])
def test_bad_checkpoint_is_rejected_and_nothing_is_touched(damage, protonet_run, tmp_path):
    good = protonet_run / "proto_synthetic" / "version_0" / "checkpoints" / "last.ckpt"
    bad = tmp_path / "bad.ckpt"
    args = []
    if damage == "other algorithm":
        checkpoint = state(good)
        checkpoint["lightning_meta"]["algorithm"] = "maml"
        torch.save(checkpoint, bad)
        pattern = r"written by maml, not protonet"
    elif damage == "other backbone":
        bad = good
        args = ["--model.hidden", 32]
        pattern = r"another architecture"
    else:
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        pattern = r"cannot be read .*truncated"
    before = snapshot(protonet_run)
    one_line_error(train("--config", "proto_synthetic.yaml", "--ckpt_path", bad, *args, *TINY, log_root=protonet_run),
                   pattern)
    assert snapshot(protonet_run) == before


def test_regression_run_keeps_the_lowest_validation_mse_and_prints_test_mse(tmp_path):
    out = ok(train("--config", "maml_sinusoid.yaml", "--trainer.max_steps", 20, "--data.batches_per_epoch", 10,
                   "--data.val_episodes", 20, "--data.test_episodes", 30, *TINY, log_root=tmp_path))
    assert re.search(r"^test/mse \d+\.\d{4} ± \d+\.\d{4}  \(sinusoid, K=10, 100 query points, 30 tasks\)$", out, re.M)
    run = tmp_path / "maml_sinusoid" / "version_0"
    events = EventAccumulator(str(run))
    events.Reload()
    val_mse = {e.step: e.value for e in events.Scalars("val/mse")}  # logged at the end of each epoch
    lowest = min(val_mse, key=val_mse.get)
    assert len(val_mse) == 2 and (run / "checkpoints" / f"best-{lowest + 1}-{val_mse[lowest]:.4f}.ckpt").exists()


def test_print_config_resolves_a_bare_config_name():
    out = ok(train("--config", "proto.yaml", "--model.lr", "0.0005", "--print_config"))
    assert "class_path: lightning_meta.algorithms.ProtoNet" in out and "lr: 0.0005" in out
    assert "n_way: 60" in out and "class_path: lightning_meta.data.OmniglotDataModule" in out


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    """A class-folder copy of CIFAR-100 made up of noise: every class of the 100, four 32x32 images each."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    from lightning_meta.data.cifar import SUPERCLASS_OF

    root = tmp_path_factory.mktemp("data")
    (root / "cifar100").mkdir()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(root / "cifar100" / "copy.zip", "w") as archive:
        for name in SUPERCLASS_OF:
            for i in range(4):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
                archive.writestr(f"train/{name}/{i}.png", buffer.getvalue())
    return root


@pytest.mark.parametrize("config", ["proto_cifar_fs.yaml", "maml_cifar_fs.yaml"])
def test_cifar_fs_configs_train_and_test_on_a_class_folder_copy(config, fake_cifar, tmp_path):
    small = ["--data.n_way", 5, "--data.n_query", 2, "--data.eval_n_query", 2, "--data.batches_per_epoch", 2,
             "--data.val_episodes", 4, "--data.test_episodes", 4, "--data.eval_tasks_per_batch", 2]
    out = ok(train("--config", config, "--trainer.max_steps", 2, *small, *TINY, data_root=fake_cifar,
                   log_root=tmp_path))
    assert re.search(r"^test/acc \d+\.\d\d ± \d+\.\d\d  \(cifar_fs/copy\.zip, 5-way 1-shot, 4 episodes\)$", out, re.M)
