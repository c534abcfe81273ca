"""keep_freed_memory: freed tensor memory is reused, so new tensors do not fault in fresh pages; the command line
applies it (unless LIGHTNING_META_KEEP_FREED_MEMORY=0), importing the library does not, nor does it set warning
filters."""

import subprocess
import sys

import pytest

from lightning_meta import ConfigError, cli

CHILD = """
import resource, torch
from lightning_meta.runtime import keep_freed_memory
{setup}
faults = []
for _ in range(10):  # as a training step: the same tensors every time
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20)  # 64 MB, written through
    y = x * 2
    del x, y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[2:]))
"""
PAGES = 4 * 16 * 2**20 // 4096  # 4 KB pages of one 64 MB tensor
IMPORT_EVERYTHING = """
import importlib, pkgutil
import lightning_meta
for module in pkgutil.walk_packages(lightning_meta.__path__, "lightning_meta."):
    importlib.import_module(module.name)
"""


def page_faults(setup: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD.format(setup=setup)], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensor_memory_is_reused_instead_of_faulted_in_again():
    applied, faults = page_faults("applied = keep_freed_memory()")
    assert applied
    _, default_faults = page_faults("applied = False")
    assert default_faults > 15 * PAGES  # glibc's default: each of the last 8 steps' two tensors faults in again
    assert faults < default_faults / 4  # kept: new pages only now and then, where the heap grows


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_importing_the_library_leaves_malloc_as_it_is():
    _, faults = page_faults(IMPORT_EVERYTHING + "applied = False")
    assert faults > 15 * PAGES  # as with glibc's default above


def test_importing_the_library_sets_no_warning_filter():
    """Every module of lightning_meta imported, with warnings.filterwarnings and simplefilter recording who calls
    them: none of lightning_meta's modules does (the command line sets its filters when it runs: cli.quiet)."""
    child = """
import inspect, warnings
callers = []
def recording(set_filter):
    def record(*args, **kwargs):
        callers.append(inspect.currentframe().f_back.f_globals.get("__name__", ""))
        return set_filter(*args, **kwargs)
    return record
warnings.filterwarnings, warnings.simplefilter = map(recording, (warnings.filterwarnings, warnings.simplefilter))
""" + IMPORT_EVERYTHING + """
print(sorted({c for c in callers if c.startswith("lightning_meta")}))
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("setting, applied", [(None, 1), ("1", 1), ("0", 0)])
def test_the_command_line_applies_it_unless_turned_off(setting, applied, monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1))
    if setting is None:
        monkeypatch.delenv(cli.KEEP_FREED_MEMORY, raising=False)
    else:
        monkeypatch.setenv(cli.KEEP_FREED_MEMORY, setting)
    with pytest.raises(ConfigError, match="config file no_such_config.yaml not found"):
        cli.main(["--config", "no_such_config.yaml"])
    assert len(calls) == applied
