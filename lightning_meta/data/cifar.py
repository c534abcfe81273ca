"""CIFAR-FS (Bertinetto, Henriques, Torr & Vedaldi 2019) and FC100 (Oreshkin, Rodríguez López & Lacoste 2018):
few-shot splits of CIFAR-100 (Krizhevsky 2009), 32x32 RGB, every class with all 600 of its images (CIFAR-100's
train and test images pooled).

- ``cifar_fs``: 64 / 16 / 20 classes drawn at random.
- ``fc100``: split by superclass, 12 / 4 / 4 (60 / 20 / 20 classes), so that no superclass is shared between
  training and test.

Read from torchvision's copy of the original pickles (``root/cifar100/cifar-100-python``, fetched with
``download: true``), or from a class-folder copy (a folder or zip of ``<class>/`` folders, e.g.
``train/<class>/`` and ``test/<class>/``): the one zip in ``root/cifar100`` when the pickles are not there, or
the folder or zip given as ``source``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from lightning_meta.data.folder import ClassFolderDataModule
from lightning_meta.data.store import ClassStore, image_array
from lightning_meta.errors import DataError

SUPERCLASSES = {  # CIFAR-100's 20 superclasses and their fine classes
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}  # fmt: skip
SUPERCLASS_OF = {fine: coarse for coarse, fines in SUPERCLASSES.items() for fine in fines}
CIFAR_FS_EVAL = {  # Bertinetto et al.'s val and test classes; the other 64 train
    "val": ("otter", "motorcycle", "television", "lamp", "crocodile", "shark", "butterfly", "beaver", "beetle",
            "tractor", "flatfish", "maple_tree", "camel", "crab", "sea", "cattle"),
    "test": ("baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy",
             "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm"),
}  # fmt: skip
FC100_SUPERCLASSES = {  # Oreshkin et al.'s superclass split (TADAM's create_dataset_cifar100.py)
    "train": ("fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
              "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
              "trees", "vehicles_1", "vehicles_2"),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}  # fmt: skip
PICKLES = "cifar-100-python"


def benchmark_classes(benchmark: str) -> dict[str, list[str]]:
    """The sorted fine classes of train, val and test of ``cifar_fs`` or ``fc100``."""
    if benchmark == "fc100":
        return {subset: sorted(f for s in supers for f in SUPERCLASSES[s]) for subset, supers in
                FC100_SUPERCLASSES.items()}
    if benchmark == "cifar_fs":
        held_out = {c for names in CIFAR_FS_EVAL.values() for c in names}
        return {"train": sorted(set(SUPERCLASS_OF) - held_out), **{s: sorted(n) for s, n in CIFAR_FS_EVAL.items()}}
    raise DataError(f"unknown CIFAR-100 benchmark {benchmark!r}; use data.benchmark: cifar_fs or fc100")


def pickle_stores(
    folder: Path, classes: dict[str, list[str]], image_size: int, download: bool
) -> dict[str, ClassStore]:
    """Class stores from torchvision's CIFAR-100 (the original pixels), train and test images pooled."""
    from torchvision.datasets import CIFAR100

    try:
        parts = [CIFAR100(str(folder), train=train, download=download) for train in (True, False)]
    except RuntimeError as error:
        raise DataError(f"CIFAR-100 at {folder / PICKLES} is incomplete or damaged ({error}); delete that folder "
                        f"and set data.download: true") from None
    images: dict[str, list[np.ndarray]] = {}
    for part in parts:
        for array, label in zip(part.data, part.targets):  # [32, 32, 3] uint8
            images.setdefault(part.classes[label], []).append(image_array(Image.fromarray(array), image_size, 3))
    return {subset: ClassStore.from_classes({n: images[n] for n in names}, SUPERCLASS_OF)
            for subset, names in classes.items()}


class CIFARFewShotDataModule(ClassFolderDataModule):
    """Episodes over CIFAR-FS or FC100 (see the module docstring).

    Args:
        benchmark: ``cifar_fs`` or ``fc100``.
        root: folder holding ``cifar100/``; default ``$LIGHTNING_META_DATA``, else ``./data``.
        source: a class-folder copy of CIFAR-100 (folder or zip) to read instead of the original pickles.
        image_size: side of the images (32, CIFAR's own).
        download: fetch the original CIFAR-100 into ``root/cifar100`` (torchvision) when no copy is there.
        cache_dir: where a decoded class-folder copy is cached (default: next to it, if writable).
        **kwargs: episode shapes, augmentation, normalisation and the rest, see :class:`EpisodicDataModule`.
    """

    group = "superclass"

    def __init__(
        self,
        benchmark: Literal["cifar_fs", "fc100"] = "cifar_fs",
        root: str | None = None,
        source: str | None = None,
        image_size: int = 32,
        download: bool = False,
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(path=source or "cifar100", root=root, image_size=image_size, channels=3,
                         cache_dir=cache_dir, **kwargs)
        self.classes = benchmark_classes(benchmark)
        self.benchmark, self.download = benchmark, download
        self.folder = self.path if source is None else self.path.parent
        if source is None:
            pickles, copies = self.folder / PICKLES, sorted(self.folder.glob("*.zip")) if self.folder.is_dir() else []
            self.path = copies[0] if not pickles.is_dir() and len(copies) == 1 else pickles
        self.from_pickles = source is None and self.path.name == PICKLES

    @property
    def name(self) -> str:
        return f"{self.benchmark}/{'cifar-100' if self.from_pickles else self.path.name}"  # the images' source

    def split_classes(self) -> dict[str, list[str]]:
        return self.classes

    def groups(self) -> dict[str, str]:
        return SUPERCLASS_OF

    def stores(self) -> dict[str, ClassStore]:
        if self._stores is None and self.from_pickles:
            if not self.path.is_dir() and not self.download:
                raise DataError(f"CIFAR-100 not found in {self.folder}: set data.download: true, put torchvision's "
                                f"{PICKLES}/ or a class-folder copy (one zip) there, or give data.source")
            self._stores = pickle_stores(self.folder, self.classes, self.image_size, self.download)
        return super().stores()
