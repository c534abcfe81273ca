"""keep_freed_memory: freed tensor memory is reused, so new tensors do not fault in fresh pages."""

import subprocess
import sys

import pytest

CHILD = """
import resource, torch
from lightning_meta.runtime import keep_freed_memory
applied = {apply} and keep_freed_memory()
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


def page_faults(apply: bool) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD.format(apply=apply)], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensor_memory_is_reused_instead_of_faulted_in_again():
    applied, faults = page_faults(apply=True)
    assert applied
    _, default_faults = page_faults(apply=False)
    assert default_faults > 15 * PAGES  # glibc's default: each of the last 8 steps' two tensors faults in again
    assert faults < default_faults / 4  # kept: new pages only now and then, where the heap grows
