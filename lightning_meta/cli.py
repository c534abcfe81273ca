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
``lightning_logs``, relative to the working directory). The command first has glibc keep freed memory for reuse
(``lightning_meta.runtime.keep_freed_memory``; ``LIGHTNING_META_KEEP_FREED_MEMORY=0`` turns that off) and silences
warnings that do not apply to its runs (:func:`quiet`); importing lightning_meta does neither.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args, get_origin, get_type_hints

import torch
import yaml
from jsonargparse import ArgumentError, ArgumentParser, get_loader
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from lightning_meta import ConfigError, EpisodicDataModule, MetaLearner, TrainingError
from lightning_meta.algorithms.base import METRICS
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
BEST = {"val/acc": "max", "val/mse": "min"}
DIGITS = {"val/acc": 2, "val/mse": 4, "test/acc": 2, "test/mse": 4}
# the settings that choose a class: the base class, and what a message calls the choice
GROUPS = {"model": (MetaLearner, "algorithm"), "data": (EpisodicDataModule, "data module")}
KEEP_FREED_MEMORY = "LIGHTNING_META_KEEP_FREED_MEMORY"  # "0": leave glibc's malloc as it is


class MetaCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.image_shape", "model.init_args.image_shape", apply_on="instantiate")
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="'last' resumes the latest run of this config; a path resumes from that file")
        parser.add_argument("--test_only", type=bool, default=False, help="only test the checkpoint in --ckpt_path")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="test the best checkpoint after training; false: validate it instead, leaving the "
                                 "test split untouched (choosing a recipe)")
        parser.add_argument("--checkpoint_every", type=int, default=500, help="write last.ckpt every this many steps")
        parser.add_argument("--log_root", type=str, default="lightning_logs", help="where runs are written")

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str]) -> None:
        """Parses as LightningCLI does; where jsonargparse refuses the settings, :func:`check_settings` names the
        problem and the fix in a ConfigError (else jsonargparse's ArgumentError goes on)."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError:
            check_settings(args)
            raise

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Checks data and checkpoint first, so that bad input is one line before anything is written."""
        self.run_name = config_name(self.config)
        self.ckpt_path, version = resolve_ckpt_path(self.config.ckpt_path, self.config.log_root, self.run_name)
        if self.ckpt_path is None and self.config.test_only and not self.model.hparams.get("pretrained"):
            raise ConfigError("--test_only needs a checkpoint: add --ckpt_path PATH (or --ckpt_path last), or a "
                              "backbone with published weights (model.pretrained)")
        if not self.config.test_only and not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError(f"{type(self.model).__name__} has nothing to train: every weight is frozen "
                              f"(model.freeze_backbone); test it as it is with --test_only true")
        trainer = self.config_init["trainer"]
        self.model.validate_setup(self.datamodule, trainer.get("inference_mode", True), trainer.get("max_steps", -1))
        if rank_zero_only.rank == 0:
            self.datamodule.prepare_data()
        self.datamodule.setup("test" if self.config.test_only else "fit")
        self.model.bind_data(self.datamodule, training=not self.config.test_only)
        if self.ckpt_path is not None:
            read_checkpoint(self.ckpt_path, self.model, None if self.config.test_only else self.datamodule)
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


class Setting(NamedTuple):
    """One model or data setting as given: the choice of class (``key`` None, its name in ``value``) or one of the
    class's arguments, typed on the command line (``text``) or read from a config file."""

    group: str  # model or data
    key: str | None
    value: Any
    text: bool = False


def check_settings(args: list[str]) -> None:
    """Checks the config files and the model and data settings of the command line ``args`` in the order
    jsonargparse applies them, and raises a ConfigError naming the first problem: a config file that is missing or
    not YAML, an unknown algorithm or data module, a setting its class does not have, a value of the wrong type.
    Called where jsonargparse refused ``args``, whose own messages speak of its internals."""
    chosen: dict[str, type] = {}
    for setting in class_settings(args):
        base, what = GROUPS[setting.group]
        if setting.key is None:
            chosen[setting.group] = find_class(setting.value, base)
            if chosen[setting.group] is None:
                choices = sorted(c.__name__ for c in subclasses(base) if not inspect.isabstract(c))
                raise ConfigError(f"unknown {what} '{setting.value}' for --{setting.group}; choose one of "
                                  f"{', '.join(choices)}")
        elif setting.group in chosen:
            check_argument(chosen[setting.group], setting)


def class_settings(args: list[str]) -> list[Setting]:
    """The model and data settings of ``args`` in order, those of a config file where the file is given."""
    settings = []
    for key, value in options(args):
        group, _, name = key.partition(".")
        if key == "config":
            config = read_config(Path(value))
            settings += [setting for part in GROUPS for setting in group_settings(part, config.get(part))]
        elif group in GROUPS and name:
            settings.append(Setting(group, name.removeprefix("init_args."), value, text=True))
        elif group in GROUPS:
            settings += group_settings(group, loaded(value))
    return settings


def options(args: list[str]) -> list[tuple[str, str]]:
    """The options of a command line as (key, value) pairs, from ``--key value``, ``--key=value`` and
    ``-c FILE`` (a value may begin with a single ``-``: ``--model.lr -0.1``)."""
    args = ["--config" if arg == "-c" else arg for arg in args]
    pairs = []
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            key, given, value = arg[2:].partition("=")
            if not given and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
            pairs.append((key, value))
    return pairs


def loaded(value: str) -> Any:
    """A value of the command line as jsonargparse reads it (YAML), or the text itself where it is not YAML."""
    try:
        return get_loader("yaml")(value)
    except yaml.YAMLError:
        return value


def read_config(path: Path) -> dict:
    """The settings of the config file ``path``, read as jsonargparse reads it; a missing file or one that is not
    YAML is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"config file {path.name} not found, neither as a path nor in {CONFIGS}; check the name")
    try:
        config = get_loader("yaml")(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = "" if mark is None else f", line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError(f"config file {path} is not valid YAML ({getattr(error, 'problem', None) or error}{where}); "
                          f"fix the file given to --config") from None
    return config if isinstance(config, dict) else {}


def group_settings(group: str, value: Any) -> list[Setting]:
    """The settings in a config's ``model`` or ``data``: a class name, or its class_path and init_args."""
    if isinstance(value, str):
        return [Setting(group, None, value)]
    if not isinstance(value, dict):
        return []
    chosen = [Setting(group, None, value["class_path"])] if "class_path" in value else []
    return chosen + [Setting(group, key, v) for key, v in (value.get("init_args") or {}).items()]


def find_class(name: str, base: type) -> type | None:
    """The subclass of ``base`` that jsonargparse takes ``name`` for: by its name or by an import path."""
    for cls in subclasses(base):
        if name in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}"):
            return cls
    module, _, attribute = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, base) else None


def check_argument(cls: type, setting: Setting) -> None:
    """Raises a ConfigError where ``cls`` has no argument of the setting's name (as jsonargparse resolves the
    arguments of a class), or where the value does not pass jsonargparse's check of the argument's type."""
    name = setting.key.split(".")[0]  # a setting inside an argument (--data.train_transform...) at its argument
    arguments = ArgumentParser(exit_on_error=False)
    arguments.add_class_arguments(cls, fail_untyped=False)
    if name not in arguments.get_defaults():
        raise ConfigError(f"{cls.__name__} has no setting '{name}'; check its spelling (--print_config lists every "
                          f"setting)")
    hint = argument_type(cls, name)
    if hint is None or name != setting.key:
        return
    one = ArgumentParser(exit_on_error=False)
    one.add_argument("--value", type=hint)
    try:
        one.parse_args([f"--value={setting.value}"]) if setting.text else one.parse_object({"value": setting.value})
    except ArgumentError:
        raise ConfigError(f"{cls.__name__} setting '{name}' must be {described(hint)}, not '{setting.value}'") from None


def argument_type(cls: type, name: str) -> Any:
    """The annotation of the argument ``name`` of ``cls``: in the first ``__init__`` of its method resolution order
    that names it (the others pass it on through ``**kwargs``); None where it has none."""
    for klass in cls.__mro__:
        if name in inspect.signature(klass.__init__).parameters:
            return get_type_hints(klass.__init__).get(name)
    return None


def described(hint: Any) -> str:
    """A type as a message names it: 'a float', 'an int', "one of 'vmap', 'loop'", 'of type tuple[int, ...]'."""
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(hint))
    if isinstance(hint, type) and get_origin(hint) is None:
        return ("an " if hint.__name__[0] in "aeiou" else "a ") + hint.__name__
    return "of type " + str(hint).replace("typing.", "")


def subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]


def config_error_in(error: BaseException | None) -> ConfigError | None:
    """The ConfigError behind an exception, if any (jsonargparse wraps those raised while instantiating)."""
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__ or error.__context__
    return error


def quiet() -> None:
    """Silences the warnings that do not apply to the command line's runs (set here, for the command line only)."""
    # LightningCLI's note for arguments given to main() rather than on the command line
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    # a checkpoint written mid-epoch cannot resume a loader without `state_dict`, Lightning warns; ours needs none:
    # the EpisodeSchedule derives its position from the batch count that Lightning itself restores
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    # under DDP Lightning recommends sync_dist for metrics logged per epoch; ours are reduced over the ranks already
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")
    # under DDP the gradient of a conv weight with one input channel comes back with the default strides, where the
    # weight has channels-last ones (the same memory); DDP copies those few values (backbones.channels_last)
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    logging.getLogger("lightning_fabric.utilities.seed").setLevel(logging.WARNING)  # "Seed set to 0", every run


def main(args: list[str] | None = None) -> dict[str, float]:
    """Trains and tests (or, with ``--test_only``, tests) as the command line ``args`` say; returns the test
    metrics (with ``--test_after_fit false``, the best checkpoint's validation metrics: the test split is never
    loaded). First applies the command line's process settings: :func:`quiet`, and ``keep_freed_memory`` (RESULTS.md,
    "Allocator") unless the environment sets ``LIGHTNING_META_KEEP_FREED_MEMORY=0``."""
    quiet()
    if os.environ.get(KEEP_FREED_MEMORY, "1") != "0":
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
        evaluate = trainer.test if cli.config.test_after_fit else trainer.validate
        evaluate(model, datamodule=data, ckpt_path=best, weights_only=True, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    stage = "test" if cli.config.test_only or cli.config.test_after_fit else "val"
    if trainer.is_global_zero:
        metric = f"{stage}/{METRICS[data.task]}"
        mean, ci95, digits = metrics[metric], metrics[metric + "_ci95"], DIGITS[metric]
        print(f"{metric} {mean:.{digits}f} ± {ci95:.{digits}f}  ({data.describe(stage)})")
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
            return fail(" ".join(str(error).split()))
        raise
    return 0


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(entry_point())
