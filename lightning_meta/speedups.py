"""One setting for the speed-ups that replace a plain PyTorch computation.

Each speed-up sits beside the computation it replaces, which stays in the code as the reference, and a test holds
the two equal:

- channels-last conv weights (``backbones.channels_last``), against PyTorch's default memory order;
- batch norm through PyTorch's native kernel for learners that differentiate once (``backbones.MetaBatchNorm``),
  against its plain tensor operations;
- Meta Networks' coordinate-wise meta-learners (``algorithms/coordinatewise.py``), against ``nn.LSTMCell`` and
  ``nn.Sequential`` applied to every coordinate (``metanet.WeightGenerator``);
- the batched augmentations (``data/augment.py``), against torchvision's transform of the same name, which the
  config chooses by its ``class_path`` (the sampler applies a torchvision transform image by image).

The environment variable ``LIGHTNING_META_SPEEDUPS=0`` runs the plain computations of the first three (read when a
network is built for the first, at every call for the others). ``benchmarks/config_speed.py`` measures a config
both ways.
"""

from __future__ import annotations

import os

SETTING = "LIGHTNING_META_SPEEDUPS"


def enabled() -> bool:
    """Whether the speed-ups run (the default), or the plain computations they replace (``SETTING=0``)."""
    return os.environ.get(SETTING, "1") != "0"
