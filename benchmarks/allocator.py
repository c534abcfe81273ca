"""Training steps per second of each algorithm's Omniglot 5-way 1-shot config through train.py, with glibc's
default allocator and with ``keep_freed_memory`` (lightning_meta/runtime.py, which train.py applies). An
allocator setting holds for a whole process, so every measurement is its own process; the two variants
alternate ``repeats`` times and the medians are reported.

    python benchmarks/allocator.py                      # every config below
    python benchmarks/allocator.py --configs maml.yaml  # a subset

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import timing

CONFIGS = {  # config: (algorithm, timed steps)
    "proto.yaml": ("protonet", 60), "matching.yaml": ("matching", 100), "relation.yaml": ("relation", 100),
    "siamese.yaml": ("siamese", 100), "maml.yaml": ("maml", 20), "fomaml.yaml": ("fomaml", 30),
    "reptile.yaml": ("reptile", 60), "mann.yaml": ("mann", 60), "metanet.yaml": ("metanet", 15),
    "meta_lstm.yaml": ("meta_lstm", 15),
}  # fmt: skip
VARIANTS = {"glibc default": "cli.keep_freed_memory = lambda: False", "freed memory kept": ""}

if __name__ == "__main__":
    timing.compare_variants(__doc__, "allocator", CONFIGS, VARIANTS, "/tmp/lightning_meta_allocator", repeats=2)
