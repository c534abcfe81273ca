"""The command line: train a meta-learner, then test its best checkpoint on fixed test episodes; or, with
``predict`` first, classify images with a trained checkpoint (lightning_meta/predict.py).

    lightning-meta --config proto.yaml                           # fit, then test the best checkpoint
    lightning-meta --config proto.yaml --model.lr 1e-4           # bare names are the packaged configs (configs/)
    lightning-meta --config my.yaml                              # a path is read as a path
    lightning-meta --config proto.yaml --ckpt_path last          # resume the latest run of this config
    lightning-meta --config proto.yaml --ckpt_path PATH --test_only
    lightning-meta --config proto.yaml --print_config
    lightning-meta predict --ckpt_path best.ckpt --support DIR --query DIR

``python train.py ...`` in a checkout is the same command. Runs are written under ``--log_root`` (default
``lightning_logs``, relative to the working directory).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
import warnings
from importlib import resources
from pathlib import Path

import torch
from jsonargparse import ArgumentError
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from lightning_meta import ConfigError, EpisodicDataModule, MetaLearner, TrainingError
from lightning_meta.checkpoint import AtomicCheckpointIO, LastCheckpoint, read_checkpoint
from lightning_meta.pictures import TestPictures
from lightning_meta.runtime import keep_freed_memory


def packaged_configs() -> Path:
    """The folder of the shipped configs, where ``--config NAME`` looks for a NAME that is not a path: the package
    ``lightning_meta.configs``, which pyproject.toml maps to the project's configs/ (installed by ``pip install .``);
    else configs/ beside the package: a checkout run in place, or one installed by ``pip install -e .``, whose import
    finder (setuptools 84) does not reach a subpackage without ``__init__.py``, but whose package is the checkout's."""
    try:
        folder = resources.files("lightning_meta.configs")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "configs"
    if isinstance(folder, Path):
        return folder
    # configs/ has no __init__.py, so lightning_meta.configs is a namespace package: files() gives a MultiplexedPath
    # of its folders (one here), whose entries are plain paths
    return next((entry.parent for entry in folder.iterdir() if isinstance(entry, Path)), Path(str(folder)))


CONFIGS = packaged_configs()
METRICS = {"classification": "acc", "regression": "mse"}  # the evaluation metric of each kind of episode
BEST = {"val/acc": "max", "val/mse": "min"}
DIGITS = {"val/acc": 2, "val/mse": 4, "test/acc": 2, "test/mse": 4}
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
logging.getLogger("lightning_fabric.utilities.seed").setLevel(logging.WARNING)


class MetaCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.image_shape", "model.init_args.image_shape", apply_on="instantiate")
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="'last' resumes the latest run of this config; a path resumes from that file")
        parser.add_argument("--test_only", type=bool, default=False, help="only test the checkpoint in --ckpt_path")
        parser.add_argument("--checkpoint_every", type=int, default=500, help="write last.ckpt every this many steps")
        parser.add_argument("--log_root", type=str, default="lightning_logs", help="where runs are written")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Checks data and checkpoint first, so that bad input is one line before anything is written."""
        self.run_name = config_name(self.config)
        self.ckpt_path, version = resolve_ckpt_path(self.config.ckpt_path, self.config.log_root, self.run_name)
        if self.ckpt_path is not None:
            read_checkpoint(self.ckpt_path, self.model, None if self.config.test_only else self.datamodule)
        elif self.config.test_only:
            raise ConfigError("--test_only needs a checkpoint: add --ckpt_path PATH (or --ckpt_path last)")
        trainer = self.config_init["trainer"]
        self.model.validate_setup(self.datamodule, trainer.get("inference_mode", True), trainer.get("max_steps", -1))
        if rank_zero_only.rank == 0:
            self.datamodule.prepare_data()
        self.datamodule.setup("test" if self.config.test_only else "fit")
        if self.config.test_only:  # writes nothing: no logs, no checkpoints, no saved config
            self.save_config_callback = None
            return super().instantiate_trainer(logger=False, enable_checkpointing=False, **kwargs)
        check_writable(Path(self.config.log_root))
        resumed = version is not None
        if not resumed and rank_zero_only.rank == 0:  # other ranks take rank 0's folders from Lightning's broadcasts
            version = claim_version(Path(self.config.log_root, self.run_name))
        run = TensorBoardLogger(self.config.log_root, name=self.run_name, version=version, default_hp_metric=False)
        run_dir = Path(run.log_dir)  # lightning_logs/<config>/version_N, whatever logger the config asks for
        if resumed:  # resuming into the same run folder: keep its config.yaml, add one beside it
            self.save_config_kwargs["config_filename"] = free_name(run_dir, "config_resumed", ".yaml")
        metric = f"val/{METRICS[self.datamodule.task]}"
        self.checkpoint = ModelCheckpoint(run_dir / "checkpoints", monitor=metric, mode=BEST[metric],
                                          filename=f"best-{{step}}-{{{metric}:.{DIGITS[metric]}f}}",
                                          auto_insert_metric_name=False)
        last = LastCheckpoint(run_dir / "checkpoints", every_n_train_steps=self.config.checkpoint_every)
        configured = trainer.get("logger")
        logger = run if configured in (None, True) else configured
        callbacks = [*(trainer.get("callbacks") or []), self.checkpoint, last, TestPictures()]
        plugins = trainer.get("plugins") or []
        plugins = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
        return super().instantiate_trainer(logger=logger, callbacks=callbacks, default_root_dir=run_dir,
                                           plugins=plugins, **kwargs)


def config_name(config) -> str:
    configs = config.get("config") or []
    return Path(str(configs[0])).stem if configs else "default"


def resolve_ckpt_path(ckpt_path: str | None, log_root: str, name: str) -> tuple[str | None, int | None]:
    """The checkpoint file to resume from and the TensorBoard version folder to keep logging into."""
    if ckpt_path is None:
        return None, None
    if ckpt_path == "last":
        runs = sorted(Path(log_root, name).glob("version_*/checkpoints/last.ckpt"),
                      key=lambda p: int(p.parents[1].name.removeprefix("version_")))
        if not runs:
            raise ConfigError(f"--ckpt_path last: no run of '{name}' with a last.ckpt under {log_root}/{name}; "
                              f"start a new run without --ckpt_path")
        return str(runs[-1]), int(runs[-1].parents[1].name.removeprefix("version_"))
    path = Path(ckpt_path)
    in_run = path.parent.name == "checkpoints" and path.parents[1].name.startswith("version_")
    return ckpt_path, int(path.parents[1].name.removeprefix("version_")) if in_run else None


def check_writable(folder: Path) -> None:
    """Makes the log folder, or says in one line why it cannot be written to."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK | os.X_OK)
    except OSError as error:
        writable, reason = False, error.strerror
    else:
        reason = "permission denied"
    if not writable:
        raise ConfigError(f"cannot write runs under --log_root {folder} ({reason}); choose a folder you can write to")


def claim_version(folder: Path) -> int:
    """Creates the next free folder version_N under ``folder`` and returns N. Creating it is the claim: of two runs
    started at the same moment, the second finds it taken and moves on to N + 1."""
    folder.mkdir(parents=True, exist_ok=True)
    taken = [p.name.removeprefix("version_") for p in folder.glob("version_*")]
    n = max((int(v) for v in taken if v.isdigit()), default=-1) + 1
    while True:
        try:
            (folder / f"version_{n}").mkdir()
            return n
        except FileExistsError:
            n += 1


def free_name(folder: Path, stem: str, suffix: str) -> str:
    k = 1
    while (folder / f"{stem}{k}{suffix}").exists():
        k += 1
    return f"{stem}{k}{suffix}"


def find_config(args: list[str]) -> list[str]:
    """Lets ``--config proto.yaml`` name a packaged config (CONFIGS) when no such path exists."""
    args = list(args)
    for i, arg in enumerate(args[:-1]):
        if arg == "--config" and not Path(args[i + 1]).exists() and (CONFIGS / args[i + 1]).exists():
            args[i + 1] = str(CONFIGS / args[i + 1])
    return args


def explain(error: ArgumentError) -> str:
    """jsonargparse's message, shortened to the key at fault where it names one."""
    message = " ".join(str(error).split())
    unknown = re.search(r"class_path '[\w.]*?(\w+)': Option '([\w.]+)' is not accepted", message)
    if unknown:
        return f"{unknown[1]} has no setting '{unknown[2]}'; check its spelling (--print_config lists every setting)"
    wrong_type = re.search(r"class_path '[\w.]*?(\w+)': Parser key \"([\w.]+)\": Expected a <class '(\w+)'>\. "
                           r"Got value: (.*?) - ", message)
    if wrong_type:
        return f"{wrong_type[1]} setting '{wrong_type[2]}' must be a {wrong_type[3]}, not '{wrong_type[4]}'"
    unknown_class = re.search(r"Parser key \"(model|data)\": .*?Expected a dot import path string: (\S+)", message)
    if unknown_class:
        base = MetaLearner if unknown_class[1] == "model" else EpisodicDataModule
        choices = sorted(c.__name__ for c in subclasses(base) if not inspect.isabstract(c))
        what = "algorithm" if unknown_class[1] == "model" else "data module"
        return f"unknown {what} '{unknown_class[2]}' for --{unknown_class[1]}; choose one of {', '.join(choices)}"
    missing = re.search(r"Parser key \"config\": File does not exist: '(.*?)'", message)
    if missing:
        return f"config file {Path(missing[1]).name} not found, neither as a path nor in {CONFIGS}; check the name"
    if message.startswith("Problems parsing config"):
        reason = message.split(":", 1)[1].strip().replace('in "<unicode string>", ', "")
        return f"a config is not valid YAML ({reason}); fix the file given to --config"
    return message


def subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]


def config_error_in(error: BaseException | None) -> ConfigError | None:
    """The ConfigError behind an exception, if any (jsonargparse wraps those raised while instantiating)."""
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__ or error.__context__
    return error


def main(args: list[str] | None = None) -> dict[str, float]:
    keep_freed_memory()
    cli = MetaCLI(MetaLearner, EpisodicDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  args=find_config(sys.argv[1:] if args is None else args), run=False,
                  parser_kwargs={"exit_on_error": False}, save_config_kwargs={"overwrite": False})
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    if cli.config.test_only:
        trainer.test(model, datamodule=data, ckpt_path=cli.ckpt_path, weights_only=True, verbose=False)
    else:
        trainer.fit(model, datamodule=data, ckpt_path=cli.ckpt_path, weights_only=True)
        best = cli.checkpoint.best_model_path or None
        trainer.test(model, datamodule=data, ckpt_path=best, weights_only=True, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        metric = f"test/{METRICS[data.task]}"
        mean, ci95, digits = metrics[metric], metrics[metric + "_ci95"], DIGITS[metric]
        print(f"{metric} {mean:.{digits}f} ± {ci95:.{digits}f}  ({data.describe('test')})")
        for name in metrics:  # the algorithm's other test metrics with an interval (MANN: accuracy by instance)
            if name.startswith(metric + "_") and not name.endswith("_ci95") and name + "_ci95" in metrics:
                print(f"{name} {metrics[name]:.{digits}f} ± {metrics[name + '_ci95']:.{digits}f}")
    if torch.distributed.is_initialized():  # left to the interpreter's exit, gloo's threads can abort it
        torch.distributed.destroy_process_group()
    return metrics


def entry_point(args: list[str] | None = None) -> int:
    """The ``lightning-meta`` command (and ``python train.py``): ``predict ...`` goes to lightning_meta.predict,
    anything else to training and testing (:func:`main`). Returns the exit status; bad input ends in one line,
    ``error: ...``, on stderr and status 1."""
    args = sys.argv[1:] if args is None else list(args)
    if args[:1] == ["predict"]:
        from lightning_meta.predict import main as predict  # imported here: training does not depend on it

        return predict(args[1:])
    try:
        main(args)
    except TrainingError as error:
        return fail(str(error))
    except (ArgumentError, ValueError) as error:
        if (cause := config_error_in(error)) is not None:
            return fail(" ".join(str(cause).split()))
        if isinstance(error, ArgumentError):
            return fail(explain(error))
        raise
    return 0


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(entry_point())
