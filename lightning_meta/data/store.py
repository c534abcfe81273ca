"""The class store: a whole split decoded once into one uint8 tensor grouped by class, and its on-disk cache."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lightning_meta.errors import DataError


@dataclass
class ClassStore:
    """All images of one split, grouped by class, so that building an episode is tensor indexing.

    ``images[c, i]`` is item ``i`` of class ``c``. Classes may hold different numbers of items: ``counts[c]``
    says how many of the ``images.shape[1]`` slots of class ``c`` are real (the rest are padding and never
    drawn); ``counts`` None means every slot is. ``groups[c]`` is the group (for Omniglot: the alphabet;
    for FC100: the superclass) of class ``c``, used for within-group episodes.
    """

    images: Tensor  # [classes, items, *x] uint8
    names: list[str]  # [classes] sorted, stable
    groups: Tensor  # [classes] int64 group index into group_names
    group_names: list[str]
    counts: Tensor | None = None  # [classes] int64, items of each class (None: all have images.shape[1])

    def __post_init__(self) -> None:
        if self.images.shape[0] != len(self.names) or self.groups.shape != (len(self.names),):
            raise ValueError("images, names and groups must have one entry per class")
        if self.counts is not None and self.counts.shape != (len(self.names),):
            raise ValueError("counts must have one entry per class")

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]

    @property
    def items_per_class(self) -> int:
        """The smallest number of items of any class (what an episode can draw from every class)."""
        return int(self.sizes.min())

    @property
    def sizes(self) -> Tensor:
        """[classes] the number of items of each class."""
        return torch.full((self.num_classes,), self.images.shape[1]) if self.counts is None else self.counts

    def real_items(self) -> Tensor:
        """[I, 2] the (class, item) index of every real image (the padding slots left out), class by class."""
        return torch.nonzero(torch.arange(self.images.shape[1]) < self.sizes[:, None])

    @classmethod
    def from_classes(cls, classes: dict[str, list[np.ndarray]], groups: dict[str, str] | None = None) -> ClassStore:
        """A store of the given classes (name -> its decoded images [*x] uint8), in sorted name order; classes
        with fewer items than the largest are padded with zeros, which are never drawn."""
        names = sorted(classes)
        most = max(len(classes[n]) for n in names)
        shape = classes[names[0]][0].shape
        images = torch.zeros(len(names), most, *shape, dtype=torch.uint8)
        for c, name in enumerate(names):
            images[c, : len(classes[name])] = torch.from_numpy(np.stack(classes[name]))
        counts = torch.tensor([len(classes[n]) for n in names])
        group_of = groups or {}
        group_names = sorted({group_of.get(n, "") for n in names})
        return cls(
            images=images, names=names,
            groups=torch.tensor([group_names.index(group_of.get(n, "")) for n in names]), group_names=group_names,
            counts=None if bool((counts == most).all()) else counts,
        )  # fmt: skip

    def state(self) -> dict:
        return {"images": self.images, "names": self.names, "groups": self.groups, "group_names": self.group_names,
                "counts": self.counts}


def decode_image(data: bytes, size: int, channels: int, where: str) -> np.ndarray:
    """Image file bytes to a [channels, size, size] uint8 array (see :func:`image_array`). A file that does not
    decode raises one DataError naming it."""
    if channels not in (1, 3):
        raise DataError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels}")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:
        raise DataError(f"cannot read image {where} ({type(error).__name__}: {error}); "
                        f"delete or replace the damaged file") from None
    return image_array(image, size, channels)


def image_array(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """A PIL image as a [channels, size, size] uint8 array: grey for 1 channel, RGB for 3, resized with Lanczos
    filtering when it is not already size x size."""
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def cache_folder(data_folder: Path, cache_dir: str | os.PathLike | None, name: str) -> Path:
    """Where a decoded store is cached: ``cache_dir`` if given, else next to the data when that folder is
    writable, else ``~/.cache/lightning_meta/<name>``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.access(data_folder, os.W_OK):
        return data_folder
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lightning_meta" / name
