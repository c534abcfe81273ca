"""One LightningModule per algorithm, found by name in ``ALGORITHMS``."""

from lightning_meta.algorithms.base import ALGORITHMS, MetaLearner, register
from lightning_meta.algorithms.gradient import GradientLearner
from lightning_meta.algorithms.maml import MAML
from lightning_meta.algorithms.protonet import ProtoNet
from lightning_meta.algorithms.reptile import Reptile

__all__ = ["ALGORITHMS", "GradientLearner", "MAML", "MetaLearner", "ProtoNet", "Reptile", "register"]
