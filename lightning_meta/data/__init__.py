"""Few-shot datasets as class stores, the episode sampler and the episodic DataModules."""

from lightning_meta.data.cifar import CIFARFewShotDataModule
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.folder import ClassFolderDataModule
from lightning_meta.data.labelled import LabelledBatch, LabelledBatches
from lightning_meta.data.miniimagenet import MiniImageNetDataModule
from lightning_meta.data.omniglot import OmniglotDataModule
from lightning_meta.data.sampler import EpisodeSampler, EpisodeSchedule
from lightning_meta.data.sinusoid import SinusoidDataModule, SinusoidTasks
from lightning_meta.data.store import ClassStore
from lightning_meta.data.synthetic import SyntheticDataModule
from lightning_meta.episode import episode_seed
from lightning_meta.errors import DataError

__all__ = [
    "CIFARFewShotDataModule", "ClassFolderDataModule", "ClassStore", "DataError", "EpisodeSampler", "EpisodeSchedule",
    "EpisodicDataModule", "LabelledBatch", "LabelledBatches", "MiniImageNetDataModule", "OmniglotDataModule",
    "SinusoidDataModule", "SinusoidTasks", "SyntheticDataModule", "episode_seed",
]  # fmt: skip
