"""One LightningModule per algorithm, found by name in ``ALGORITHMS``."""

from lightning_meta.algorithms.anil import ANIL
from lightning_meta.algorithms.base import ALGORITHMS, MetaLearner, register
from lightning_meta.algorithms.baseline import Baseline, BaselinePlusPlus
from lightning_meta.algorithms.gradient import GradientLearner
from lightning_meta.algorithms.maml import MAML
from lightning_meta.algorithms.mann import MANN
from lightning_meta.algorithms.matching import MatchingNetwork
from lightning_meta.algorithms.meta_lstm import MetaLSTM
from lightning_meta.algorithms.metanet import MetaNet
from lightning_meta.algorithms.metasgd import MetaSGD
from lightning_meta.algorithms.metric import MetricLearner
from lightning_meta.algorithms.pretrained import PretrainedLearner
from lightning_meta.algorithms.protonet import ProtoNet
from lightning_meta.algorithms.r2d2 import R2D2
from lightning_meta.algorithms.relation import RelationNetwork
from lightning_meta.algorithms.reptile import Reptile
from lightning_meta.algorithms.siamese import Siamese
from lightning_meta.algorithms.simpleshot import SimpleShot

__all__ = [
    "ALGORITHMS", "ANIL", "Baseline", "BaselinePlusPlus", "GradientLearner", "MAML", "MANN", "MatchingNetwork",
    "MetaLearner", "MetaLSTM", "MetaNet", "MetaSGD", "MetricLearner", "PretrainedLearner", "ProtoNet",
    "R2D2", "RelationNetwork", "Reptile", "Siamese", "SimpleShot", "register",
]  # fmt: skip
