"""Train a meta-learner, then test its best checkpoint on fixed test episodes.

    python train.py --config configs/proto.yaml                  # fit, then test the best checkpoint
    python train.py --config proto.yaml --model.lr 1e-4          # bare names are looked up in configs/
    python train.py --config configs/proto.yaml --ckpt_path last # resume the latest run of this config
    python train.py --config configs/proto.yaml --ckpt_path PATH --test_only
    python train.py --config configs/proto.yaml --print_config
    python train.py predict --ckpt_path PATH --support DIR --query DIR   # classify images (lightning_meta/predict.py)

The command line lives in lightning_meta/cli.py; installed (pip install .), the same command is ``lightning-meta``.
"""

import sys

from lightning_meta.cli import entry_point

if __name__ == "__main__":
    sys.exit(entry_point())
