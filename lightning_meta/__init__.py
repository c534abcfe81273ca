"""lightning_meta: meta-learning algorithms as PyTorch Lightning modules over episodic few-shot data."""

from lightning_meta.algorithms import (
    ALGORITHMS,
    ANIL,
    MAML,
    Baseline,
    BaselinePlusPlus,
    MANN,
    MatchingNetwork,
    MetaLearner,
    MetaLSTM,
    MetaNet,
    MetaSGD,
    ProtoNet,
    R2D2,
    RelationNetwork,
    Reptile,
    Siamese,
    SimpleShot,
)
from lightning_meta.data import EpisodicDataModule, OmniglotDataModule, SinusoidDataModule, SyntheticDataModule
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError, TrainingError
from lightning_meta.predict import Prediction, classify

__all__ = [
    "ALGORITHMS", "ANIL", "Baseline", "BaselinePlusPlus", "ConfigError", "Episode", "EpisodicDataModule", "MAML",
    "MANN", "MatchingNetwork", "MetaLearner", "MetaLSTM", "MetaNet", "MetaSGD", "OmniglotDataModule", "Prediction",
    "ProtoNet", "R2D2", "RelationNetwork", "Reptile", "Siamese", "SimpleShot", "SinusoidDataModule",
    "SyntheticDataModule", "TrainingError", "classify",
]  # fmt: skip
