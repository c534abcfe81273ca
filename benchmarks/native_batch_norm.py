"""Training steps per second of the learners that never differentiate through their inner steps (Reptile,
first-order MAML, the LSTM meta-learner), with batch norm in plain tensor operations (exact to every order under
vmap) and through PyTorch's native kernel (``GradientLearner.first_derivatives_only``, what they use). Each
measurement is its own process of train.py; the two variants alternate ``repeats`` times and the medians are
reported.

    python benchmarks/native_batch_norm.py
    python benchmarks/native_batch_norm.py --configs reptile.yaml

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import timing

CONFIGS = {"reptile.yaml": ("reptile", 60), "fomaml.yaml": ("fomaml", 30), "meta_lstm.yaml": ("meta_lstm", 15)}
EXACT = ("import contextlib\nfrom lightning_meta.algorithms.gradient import GradientLearner\n"
         "GradientLearner.first_derivatives_only = lambda self, first_order=True: contextlib.nullcontext()")
VARIANTS = {"tensor operations": EXACT, "native kernel": ""}

if __name__ == "__main__":
    timing.compare_variants(__doc__, "native_batch_norm", CONFIGS, VARIANTS, "/tmp/lightning_meta_native_batch_norm",
                            repeats=3)
