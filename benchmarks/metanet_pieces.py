"""Training steps per second of Meta Networks with its meta-learner m (an MLP over every weight coordinate) computed
through its layers in chunks of coordinates, as lightning_meta/algorithms/coordinatewise.py did at commit 76620d3
(read from git), and by pieces, as it does now. The two take turns step by step in one process (timing.py,
``compare_interleaved``): this machine's speed changes by up to 1.7x from one minute to the next, more than the
difference between separate processes could show.

    python benchmarks/metanet_pieces.py                           # 5-way and 20-way 1-shot
    python benchmarks/metanet_pieces.py --configs metanet.yaml    # one of them

Run it on an otherwise idle machine, in a git checkout.
"""

from __future__ import annotations

import contextlib
import subprocess
import types
from collections.abc import Iterator

import timing
from results import ROOT

from lightning_meta.algorithms import coordinatewise

CONFIGS = {"metanet.yaml": ("metanet", 60), "metanet_20way.yaml": ("metanet", 20)}  # config: (algorithm, timed steps)
BEFORE = "76620d3"


def module_at(commit: str, path: str) -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    module = types.ModuleType(f"{path}@{commit}")
    exec(compile(source, module.__name__, "exec"), module.__dict__)
    return module


LAYERS = module_at(BEFORE, "lightning_meta/algorithms/coordinatewise.py").mlp


@contextlib.contextmanager
def through_layers() -> Iterator[None]:
    by_pieces, coordinatewise.mlp = coordinatewise.mlp, LAYERS
    try:
        yield
    finally:
        coordinatewise.mlp = by_pieces


VARIANTS = {"layers in chunks (before)": through_layers, "by pieces (now)": contextlib.nullcontext}

if __name__ == "__main__":
    timing.compare_interleaved(__doc__, "metanet_pieces", CONFIGS, VARIANTS)
