"""Training steps per second of Meta Networks through train.py, with the meta-learners d and m as they ran before
(nn.LSTMCell and nn.Sequential under autograd over all coordinates at once) and as they run now (the chunked
coordinate-wise networks of lightning_meta/algorithms/coordinatewise.py). Each measurement is its own process; the
two variants alternate ``repeats`` times and the medians are reported.

    python benchmarks/metanet_generators.py                           # 5-way and 20-way 1-shot
    python benchmarks/metanet_generators.py --configs metanet.yaml    # one of them

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import timing

CONFIGS = {"metanet.yaml": ("metanet", 15), "metanet_20way.yaml": ("metanet", 8)}  # config: (algorithm, timed steps)
AUTOGRAD = """
from lightning_meta.algorithms import metanet

def forward(self, group, g):
    x = metanet.preprocess(g.detach())
    if not self.recurrent:
        return self.mlps[group](x)[..., 0]
    S, B, P, _ = x.shape
    h = c = x.new_zeros(B * P, self.cells[group].hidden_size)
    for step in x.view(S, B * P, 2):
        h, c = self.cells[group](step, (h, c))
    return self.heads[group](h).view(B, P)

metanet.WeightGenerator.forward = forward
"""
VARIANTS = {"autograd (before)": AUTOGRAD, "coordinate-wise (now)": ""}

if __name__ == "__main__":
    timing.compare_variants(__doc__, "metanet_generators", CONFIGS, VARIANTS, "/tmp/lightning_meta_generators",
                            repeats=3)
