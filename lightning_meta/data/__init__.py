"""Few-shot datasets as class stores, the episode sampler and the episodic DataModules."""

from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.omniglot import OmniglotDataModule
from lightning_meta.data.sampler import EpisodeSampler, EpisodeSchedule, episode_seed
from lightning_meta.data.sinusoid import SinusoidDataModule, SinusoidTasks
from lightning_meta.data.store import ClassStore, DataError
from lightning_meta.data.synthetic import SyntheticDataModule

__all__ = [
    "ClassStore", "DataError", "EpisodeSampler", "EpisodeSchedule", "EpisodicDataModule", "OmniglotDataModule",
    "SinusoidDataModule", "SinusoidTasks", "SyntheticDataModule", "episode_seed",
]  # fmt: skip
