"""A synthetic few-shot data set for fast tests: every class is a random prototype plus Gaussian noise."""

from __future__ import annotations

from typing import Any

import torch

from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.store import ClassStore

SUBSET_SEEDS = {"train": 0, "val": 1, "test": 2}


def synthetic_store(
    num_classes: int, items_per_class: int, shape: tuple[int, ...], noise: float, num_groups: int, seed: int
) -> ClassStore:
    """Class ``c`` has a prototype drawn uniformly in [0, 255]; its items add N(0, (255 * noise)^2) and are
    rounded to uint8. Image prototypes (C, H, W) are blocky, drawn at a quarter of the resolution, so that
    the class signal is spatially smooth and the pixel noise is not: a conv net must learn to average."""
    g = torch.Generator().manual_seed(seed)
    if len(shape) == 3:
        c, h, w = shape
        coarse = torch.rand(num_classes, c, -(-h // 4), -(-w // 4), generator=g) * 255
        prototypes = coarse.repeat_interleave(4, -2).repeat_interleave(4, -1)[..., :h, :w][:, None]
    else:
        prototypes = torch.rand(num_classes, 1, *shape, generator=g) * 255
    items = prototypes + torch.randn(num_classes, items_per_class, *shape, generator=g) * (255 * noise)
    groups = torch.arange(num_classes) % num_groups
    return ClassStore(
        images=items.round().clamp(0, 255).to(torch.uint8),
        names=[f"class{c:05d}" for c in range(num_classes)],
        groups=groups,
        group_names=[f"group{g:03d}" for g in range(num_groups)],
    )


class SyntheticDataModule(EpisodicDataModule):
    """Episodes over synthetic classes of any input shape (``(1, 28, 28)`` images, or ``(64,)`` vectors)."""

    def __init__(
        self,
        shape: tuple[int, ...] = (1, 28, 28),
        classes: tuple[int, int, int] = (64, 16, 20),
        items_per_class: int = 20,
        noise: float = 0.5,
        num_groups: int = 4,
        data_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.shape, self.noise, self.num_groups, self.data_seed = tuple(shape), noise, num_groups, data_seed
        self.classes = dict(zip(SUBSET_SEEDS, classes))
        self.items_per_class = items_per_class

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def name(self) -> str:
        return "synthetic"

    def build_store(self, subset: str) -> ClassStore:
        seed = 1000 * self.data_seed + SUBSET_SEEDS[subset]
        return synthetic_store(self.classes[subset], self.items_per_class, self.shape, self.noise, self.num_groups,
                               seed)
