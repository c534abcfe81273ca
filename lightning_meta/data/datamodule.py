"""The episodic DataModule: class stores and episode samplers for train / val / test."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_meta.data.labelled import LabelledBatch, LabelledBatches
from lightning_meta.data.sampler import EpisodeSampler, EpisodeSchedule
from lightning_meta.data.store import ClassStore
from lightning_meta.episode import Episode, collate_episodes
from lightning_meta.errors import DataError

SUBSETS = ("train", "val", "test")


def normalise(images: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    """uint8 images [..., C, H, W] to floats in [0, 1], then per-channel normalisation by ``mean`` and ``std``
    ([C, 1, 1], or None for none): what a model reads."""
    x = images.float().div_(255)
    return x if mean is None else (x - mean.to(x.device)) / std.to(x.device)


def default_data_root() -> Path:
    """``$LIGHTNING_META_DATA`` if set, else ``./data``: a folder holding ``omniglot/``, ``cifar100/``, ..."""
    return Path(os.environ.get("LIGHTNING_META_DATA", "data"))


class EpisodicDataModule(pl.LightningDataModule, ABC):
    """Episodes over the class stores a subclass provides (``build_store``).

    Training episodes are ``n_way``-way ``k_shot``-shot with ``n_query`` queries per class, ``tasks_per_batch``
    of them per training step and ``batches_per_epoch`` steps per epoch; they are drawn from ``seed`` and
    never repeat. Validation and test episodes have their own shape (``eval_*``, defaulting to the
    training one) and are fixed: they depend only on ``eval_seed``, so every run is scored on the same ones.
    ``train_transform`` (a torchvision v2 transform on uint8 image tensors, or one of the batched random crop,
    flip, colour jitter and affine transforms of ``lightning_meta.data.augment``, or a ``Compose`` of them, which
    augment all images of an episode in one call) augments each training image, and ``eval_transform`` each
    validation and test image; ``mean`` and ``std`` normalise every image (per channel) once it is a float
    on the device.

    With ``train_batches: labelled`` a training step is instead a batch of ``batch_size`` labelled images from all
    training classes (``lightning_meta.data.labelled``), for the algorithms that pretrain on them (Baseline,
    Baseline++, SimpleShot); validation and test stay episodic.
    """

    group: str = "group"  # what a class group is called in this data set ("alphabet" for Omniglot)
    task: str = "classification"  # or "regression": episodes with real-valued targets and n_way 0
    bright_on_dark: bool = False  # images are stored inverted (255 - pixel), as Omniglot's strokes bright on black

    def __init__(
        self,
        n_way: int = 5,
        k_shot: int = 1,
        n_query: int = 15,
        tasks_per_batch: int = 1,
        eval_n_way: int | None = None,
        eval_k_shot: int | None = None,
        eval_n_query: int | None = None,
        eval_tasks_per_batch: int = 10,
        batches_per_epoch: int = 500,
        val_episodes: int = 200,
        test_episodes: int = 1000,
        within_group: bool = False,
        train_batches: Literal["episodes", "labelled"] = "episodes",
        batch_size: int = 64,
        seed: int = 0,
        eval_seed: int = 0,
        train_transform: nn.Module | None = None,
        eval_transform: nn.Module | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("tasks_per_batch", tasks_per_batch), ("eval_tasks_per_batch", eval_tasks_per_batch),
                            ("batches_per_epoch", batches_per_epoch), ("val_episodes", val_episodes),
                            ("test_episodes", test_episodes), ("batch_size", batch_size)):
            if value < 1:
                raise DataError(f"data.{name} must be at least 1 (got {value})")
        self.shapes = {
            "train": (n_way, k_shot, n_query),
            "val": (eval_n_way or n_way, eval_k_shot or k_shot, eval_n_query or n_query),
        }
        self.shapes["test"] = self.shapes["val"]
        if train_batches not in ("episodes", "labelled"):
            raise DataError(f"data.train_batches must be 'episodes' or 'labelled' (got {train_batches!r})")
        self.train_batches, self.batch_size = train_batches, batch_size
        self.tasks_per_batch, self.eval_tasks_per_batch = tasks_per_batch, eval_tasks_per_batch
        self.batches_per_epoch = batches_per_epoch
        self.num_episodes = {"val": val_episodes, "test": test_episodes}
        self.within_group, self.seed, self.eval_seed = within_group, seed, eval_seed
        self.transforms = {"train": train_transform, "val": eval_transform, "test": eval_transform}
        self.num_workers = num_workers
        if (mean is None) != (std is None):
            raise DataError("data.mean and data.std go together: set both (one value per channel) or neither")
        self.mean = None if mean is None else torch.tensor(mean).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(-1, 1, 1)
        self.samplers: dict[str, Dataset[Episode] | Dataset[LabelledBatch]] = {}
        self.subset_stores: dict[str, ClassStore] = {}  # built by ``store``

    def build_store(self, subset: str) -> ClassStore:
        """The class store of ``subset`` ('train', 'val' or 'test'); class-based data sets implement this."""
        raise NotImplementedError(f"{type(self).__name__} implements neither build_store nor build_sampler")

    def store(self, subset: str) -> ClassStore:
        """The class store of ``subset``, built once."""
        if subset not in self.subset_stores:
            self.subset_stores[subset] = self.build_store(subset)
        return self.subset_stores[subset]

    def store_inputs(self, subset: str, device: torch.device, chunk: int = 512) -> Iterator[Tensor]:
        """Every real image of ``subset``'s class store as a model input on ``device`` (floats, normalised as an
        episode's, without transforms), ``chunk`` images at a time, class by class."""
        store = self.store(subset)
        for items in store.real_items().split(chunk):
            yield self.to_float(store.images[items[:, 0], items[:, 1]].to(device))

    def training_classes(self) -> int:
        """The number of training classes (the pretraining family's classifier has one output per class)."""
        return self.store("train").num_classes

    def build_sampler(self, subset: str) -> Dataset[Episode] | Dataset[LabelledBatch]:
        """The episodes of ``subset``, a dataset indexed by episode number: N-way K-shot over its class store; or,
        for training with ``train_batches: labelled``, its labelled batches, indexed by batch number."""
        if subset == "train" and self.train_batches == "labelled":
            return LabelledBatches(self.store(subset), self.batch_size, self.seed, self.transforms[subset])
        n, k, q = self.shapes[subset]
        return EpisodeSampler(
            self.store(subset), subset, n, k, q,
            seed=self.seed if subset == "train" else self.eval_seed,
            within_group=self.within_group,
            transform=self.transforms[subset],
        )  # fmt: skip

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one input, e.g. (1, 28, 28), known before any data is read."""

    @property
    @abstractmethod
    def name(self) -> str:
        """Dataset and split, e.g. 'omniglot/vinyals'."""

    def describe(self, subset: str = "test") -> str:
        """The evaluation episodes of ``subset`` in words: 'omniglot/vinyals, 5-way 1-shot, 1000 episodes'."""
        n, k, _ = self.shapes[subset]
        within = f", within-{self.group}" if self.within_group else ""
        return f"{self.name}, {n}-way {k}-shot{within}, {self.num_episodes[subset]} episodes"

    def setup(self, stage: str) -> None:
        subsets = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, SUBSETS)
        for subset in subsets:
            if subset not in self.samplers:
                self.samplers[subset] = self.build_sampler(subset)

    def _loader(self, subset: str) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        train = subset == "train"
        if train and self.train_batches == "labelled":  # an item is a whole batch: one a step
            schedule = EpisodeSchedule(self.batches_per_epoch * world, 1, rank, world, self._trained_batches)
            return DataLoader(self.samplers[subset], batch_size=None, sampler=schedule, num_workers=self.num_workers,
                              persistent_workers=self.num_workers > 0)
        batch = self.tasks_per_batch if train else self.eval_tasks_per_batch
        episodes = self.batches_per_epoch * batch * world if train else self.num_episodes[subset]
        schedule = EpisodeSchedule(episodes, batch, rank, world, self._trained_batches if train else None)
        return DataLoader(self.samplers[subset], batch_size=batch, sampler=schedule, collate_fn=collate_episodes,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def to_float(self, images: Tensor) -> Tensor:
        """uint8 images to floats in [0, 1], then per-channel normalisation if mean and std are set."""
        return images if images.dtype != torch.uint8 else normalise(images, self.mean, self.std)

    def transfer_batch_to_device(self, batch: Episode | LabelledBatch, device: torch.device,
                                 dataloader_idx: int) -> Episode | LabelledBatch:
        """Moves the batch's tensors to ``device`` but an episode's task keys, which stay on the CPU: they seed CPU
        generators (``Episode.generator``), and reading them from an accelerator would wait for it at every task."""
        if isinstance(batch, LabelledBatch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        keys, batch.keys = batch.keys, None
        batch = super().transfer_batch_to_device(batch, device, dataloader_idx)
        batch.keys = keys
        return batch

    def on_after_batch_transfer(self, batch: Episode | LabelledBatch, dataloader_idx: int) -> Episode | LabelledBatch:
        if isinstance(batch, LabelledBatch):
            batch.images = self.to_float(batch.images)
        else:
            batch.support, batch.query = self.to_float(batch.support), self.to_float(batch.query)
        return batch

    def training_episodes(self) -> dict[str, int]:
        """What fixes the sequence of training episodes (or labelled batches); a run resumed from a checkpoint must
        keep all of it."""
        if self.train_batches == "labelled":
            return {"train_batches": "labelled", "batch_size": self.batch_size, "seed": self.seed}
        n, k, q = self.shapes["train"]
        return {"n_way": n, "k_shot": k, "n_query": q, "tasks_per_batch": self.tasks_per_batch, "seed": self.seed}

    def preprocessing(self) -> dict[str, Any]:
        """How an image file becomes a model input here: decoded to ``image_shape`` (grey or RGB, resized to a
        square with Lanczos filtering), inverted where ``bright_on_dark``, then scaled to [0, 1] and normalised by
        ``mean`` and ``std``. Saved in every checkpoint, so that the checkpoint alone can classify new images
        (``lightning_meta.predict``). ``eval_transform`` is the evaluation transform's description, or None."""
        transform = self.transforms["test"]
        return {
            "task": self.task, "image_shape": list(self.image_shape), "bright_on_dark": self.bright_on_dark,
            "mean": None if self.mean is None else self.mean.flatten().tolist(),
            "std": None if self.std is None else self.std.flatten().tolist(),
            "eval_transform": None if transform is None else repr(transform),
        }  # fmt: skip

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Saved in every checkpoint (Lightning's hook): the training episodes, which resuming checks, and the
        preprocessing, which prediction on new images repeats."""
        return {"training_episodes": self.training_episodes(), "preprocessing": self.preprocessing()}

    def _trained_batches(self) -> int:
        """Training batches done so far; Lightning restores the count from a checkpoint, so a resumed run
        continues with the very next episode."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.total.processed
