"""Labelled batches for pretraining: ordinary supervised batches of images from all training classes (the
pretrain-and-evaluate family: Baseline, Baseline++, SimpleShot), drawn from the training split's class store, the
one the training episodes come from, so no image is decoded twice and no validation or test class can appear.

Batch ``g`` of a run is a pure function of ``(seed, g)``, as an episode is of its index: the training images are
put in a random order once per pass over them (a *data epoch* ``e``, its order drawn from ``(seed, e)``) and cut
into ``images // batch_size`` batches, the remainder of a pass left out (PyTorch's ``drop_last``). ``g`` counts the
batches of all ranks, as the episode sampler counts episodes: training step ``b`` of rank ``r`` of ``W`` takes batch
``b * W + r`` (``EpisodeSchedule`` with one batch per item), so resuming needs only the number of steps trained, and
``W`` ranks train on ``W`` different batches a step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_meta.data.augment import is_batched
from lightning_meta.data.sampler import transformed
from lightning_meta.data.store import ClassStore
from lightning_meta.episode import episode_seed
from lightning_meta.errors import DataError


@dataclass
class LabelledBatch:
    """A batch of labelled images from the training classes."""

    images: Tensor  # [B, *x] uint8 images (floats once on the device)
    labels: Tensor  # [B] int64, each image's class: its index in the training store, 0 .. C-1


class LabelledBatches(Dataset[LabelledBatch]):
    """The labelled batches of a class store, a map-style dataset whose keys are batch numbers (every non-negative
    integer is a batch). ``transform`` augments each image under a random state seeded from the batch number."""

    def __init__(self, store: ClassStore, batch_size: int, seed: int = 0,
                 transform: Callable[[Tensor], Tensor] | None = None) -> None:
        self.images = store.real_items()  # [I, 2]: (class, item) of every real image
        if not 1 <= batch_size <= len(self.images):
            raise DataError(f"data.batch_size must be between 1 and the {len(self.images)} training images (got "
                            f"{batch_size}); lower it")
        self.store, self.batch_size, self.seed = store, batch_size, seed
        self.transform, self.batched = transform, is_batched(transform)
        self.per_pass = len(self.images) // batch_size  # batches in one data epoch
        self.epoch, self.permutation = -1, torch.empty(0, dtype=torch.long)

    def order(self, epoch: int) -> Tensor:
        """The random order [I] of the training images in data epoch ``epoch`` (the last one drawn is kept)."""
        if epoch != self.epoch:
            g = torch.Generator().manual_seed(episode_seed(self.seed, "train/labelled", epoch))
            self.epoch, self.permutation = epoch, torch.randperm(len(self.images), generator=g)
        return self.permutation

    def __getitem__(self, index: int) -> LabelledBatch:
        epoch, b = divmod(index, self.per_pass)
        chosen = self.images[self.order(epoch)[b * self.batch_size : (b + 1) * self.batch_size]]  # [B, 2]
        images = self.store.images[chosen[:, 0], chosen[:, 1]]  # [B, *x]
        if self.transform is not None:
            seed = episode_seed(self.seed, "train/labelled/transform", index)
            images = transformed(images, self.transform, self.batched, seed)
        return LabelledBatch(images=images, labels=chosen[:, 0])
