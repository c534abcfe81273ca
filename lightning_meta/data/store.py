"""The class store: a whole split decoded once into one uint8 tensor grouped by class."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lightning_meta.errors import ConfigError


class DataError(ConfigError):
    """Bad data or data settings; the message says what is wrong and how to fix it."""


@dataclass
class ClassStore:
    """All images of one split, grouped by class, so that building an episode is tensor indexing.

    ``images[c, i]`` is item ``i`` of class ``c``; every class has the same number of items. ``groups[c]``
    is the group (for Omniglot: the alphabet) of class ``c``, used for within-group episodes.
    """

    images: Tensor  # [classes, items, *x] uint8
    names: list[str]  # [classes] sorted, stable
    groups: Tensor  # [classes] int64 group index into group_names
    group_names: list[str]

    def __post_init__(self) -> None:
        if self.images.shape[0] != len(self.names) or self.groups.shape != (len(self.names),):
            raise ValueError("images, names and groups must have one entry per class")

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]

    @property
    def items_per_class(self) -> int:
        return self.images.shape[1]
