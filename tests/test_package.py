"""The project as an installed package: ``pip install .`` and ``pip install -e .`` into a fresh virtual environment,
then the ``lightning-meta`` command and the packaged configs, used from a folder outside the project.

Offline: the build runs on this interpreter's setuptools (``--no-build-isolation``) and nothing else is installed
(``--no-deps``); the new environment reaches this one's packages (torch, Lightning, pip, setuptools) through a .pth
file. (``venv --system-site-packages`` would not do: from a virtual environment's interpreter it gives the base
interpreter's site-packages, not this environment's.)
"""

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ["pyproject.toml", "README.md", "lightning_meta", "configs"]  # what a build of the project reads
CHECK = """
import contextlib, io, json, sys
from importlib import resources
import lightning_meta
from lightning_meta import cli

stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    status = cli.entry_point(["--config", "no_such_config.yaml"])
try:
    packaged = str(resources.files("lightning_meta.configs").joinpath("proto.yaml"))
except ModuleNotFoundError:
    packaged = None
print(json.dumps({"package": lightning_meta.__file__, "configs": str(cli.CONFIGS), "packaged": packaged,
                  "proto": cli.find_config(["--config", "proto.yaml"])[1], "missing": [status, stderr.getvalue()]}))
"""


def build_ready() -> None:
    """Skips unless the project can be built here without the network."""
    try:
        import setuptools
    except ImportError:
        pytest.skip(f"setuptools is not installed in {sys.prefix}: the offline build (--no-build-isolation) needs it")
    if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (70, 1):
        pytest.skip(f"setuptools {setuptools.__version__} in {sys.prefix}: building a wheel needs 70.1 or later")


def run(*command, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INDEX"] = "1"  # nothing from the network, whatever pip's own configuration says
    result = subprocess.run(list(map(str, command)), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def visible_site_packages() -> list[str]:
    """The folders this interpreter imports installed packages from."""
    return [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]


def environment(folder: Path) -> tuple[Path, Path]:
    """A fresh virtual environment of this interpreter that sees this environment's packages: its python and its
    site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "_tested_environment.pth").write_text("\n".join(visible_site_packages()) + "\n")
    return python, purelib


def install(tmp: Path, *editable: str) -> tuple[Path, Path, Path]:
    """``pip install [-e] .`` of a copy of the project (a build writes build/ and *.egg-info beside its source) into a
    new environment: the copy, the environment's python and its site-packages."""
    source = tmp / "source"
    if not source.exists():
        source.mkdir()
        for name in PROJECT:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / name, source / name)
    python, purelib = environment(tmp / ("editable" if editable else "installed"))
    run(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input", *editable, source,
        cwd=tmp)
    return source, python, purelib


def check(python: Path, cwd: Path) -> dict:
    return json.loads(run(python, "-c", CHECK, cwd=cwd).stdout.strip().splitlines()[-1])


def files(folder: Path, suffix: str) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob(f"*{suffix}") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    build_ready()
    folder = tmp_path_factory.mktemp("package")
    (folder / "elsewhere").mkdir()  # the working directory of the commands: no lightning_meta, no configs there
    return folder


def test_installed_package_and_command_work_outside_the_project(tmp):
    source, python, purelib = install(tmp)
    elsewhere, installed = tmp / "elsewhere", purelib / "lightning_meta"
    found = check(python, elsewhere)
    assert Path(found["package"]) == installed / "__init__.py", found  # the installed copy, not the project
    assert Path(found["configs"]) == installed / "configs" and found["packaged"] == found["proto"], found
    assert Path(found["proto"]) == installed / "configs" / "proto.yaml" and Path(found["proto"]).is_file(), found
    status, message = found["missing"]
    assert status == 1 and len(message.strip().splitlines()) == 1, message
    assert message.startswith(f"error: config file no_such_config.yaml not found, neither as a path nor in {installed}")
    assert files(installed, ".py") == files(source / "lightning_meta", ".py")  # every module and subpackage
    assert files(installed / "configs", ".yaml") == files(source / "configs", ".yaml")

    command = python.parent / "lightning-meta"
    usage = run(command, "--help", cwd=elsewhere).stdout
    assert usage.startswith("usage: lightning-meta") and "--config" in usage and "--ckpt_path" in usage, usage
    config = run(command, "--config", "proto_synthetic.yaml", "--model.lr", "0.0005", "--print_config",
                 cwd=elsewhere).stdout
    assert "class_path: lightning_meta.data.SyntheticDataModule" in config and "lr: 0.0005" in config, config
    assert not list(elsewhere.iterdir())  # nothing written to the working directory


def test_editable_install_finds_the_projects_configs(tmp):
    shadows = [folder for folder in visible_site_packages() if Path(folder, "lightning_meta", "__init__.py").exists()]
    if shadows:
        pytest.skip(f"lightning_meta is installed (not editable) in {shadows[0]}, which the test environment sees and "
                    f"which would come before an editable install; pip uninstall lightning-meta there")
    source, python, _ = install(tmp, "-e")
    found = check(python, tmp / "elsewhere")
    assert Path(found["package"]) == source / "lightning_meta" / "__init__.py", found  # the source copy, in place
    assert Path(found["configs"]) == source / "configs", found
    assert Path(found["proto"]) == source / "configs" / "proto.yaml", found
    status, message = found["missing"]
    assert status == 1 and message.startswith("error: config file no_such_config.yaml not found"), message
