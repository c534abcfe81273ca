"""One LightningModule per algorithm, found by name in ``ALGORITHMS``."""

from lightning_meta.algorithms.base import ALGORITHMS, MetaLearner, register
from lightning_meta.algorithms.protonet import ProtoNet

__all__ = ["ALGORITHMS", "MetaLearner", "ProtoNet", "register"]
