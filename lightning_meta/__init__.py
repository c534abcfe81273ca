"""lightning_meta: meta-learning algorithms as PyTorch Lightning modules over episodic few-shot data."""

from lightning_meta.algorithms import ALGORITHMS, MetaLearner, ProtoNet
from lightning_meta.data import EpisodicDataModule, OmniglotDataModule, SyntheticDataModule
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError

__all__ = [
    "ALGORITHMS", "ConfigError", "Episode", "EpisodicDataModule", "MetaLearner", "OmniglotDataModule", "ProtoNet",
    "SyntheticDataModule",
]  # fmt: skip
