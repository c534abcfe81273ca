"""miniImageNet (Vinyals et al. 2016) with the split of Ravi & Larochelle (2017): 100 ImageNet classes of 600
images, 64 / 16 / 20 for train / val / test, resized to 84x84 once and cached.

The images are the user's (ImageNet's terms forbid redistributing them), in ``root/miniimagenet/`` as either
- ``images/`` (or ``images.zip``) with the 60,000 JPEGs named ``<synset><index>.jpg``, beside the split files
  ``train.csv``, ``val.csv`` and ``test.csv`` (header ``filename,label``; in ``miniimagenet/`` itself or in
  ``miniimagenet/splits/ravi/``), the layout of Ravi & Larochelle's release; or
- the widely shared pickles ``mini-imagenet-cache-{train,val,test}.pkl``, each a dict of ``image_data``
  (uint8 [N, 84, 84, 3]) and ``class_dict`` (synset -> indices into ``image_data``).
"""

from __future__ import annotations

import csv
import pickle
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from lightning_meta.data.datamodule import SUBSETS
from lightning_meta.data.folder import ClassFolderDataModule, load_stores
from lightning_meta.data.store import ClassStore, image_array
from lightning_meta.errors import DataError

PICKLE = "mini-imagenet-cache-{}.pkl"


def read_csv_splits(folder: Path) -> dict[str, dict[str, str]]:
    """subset -> {file name: synset} from Ravi's split CSVs in ``folder`` or ``folder/splits/ravi``."""
    for candidate in (folder, folder / "splits" / "ravi"):
        if all((candidate / f"{subset}.csv").is_file() for subset in SUBSETS):
            splits = {}
            for subset in SUBSETS:
                with open(candidate / f"{subset}.csv", newline="") as file:
                    rows = list(csv.DictReader(file))
                if not rows or not {"filename", "label"} <= set(rows[0]):
                    raise DataError(f"{candidate / f'{subset}.csv'} is not a miniImageNet split file (header "
                                    f"filename,label); replace it with Ravi & Larochelle's")
                splits[subset] = {row["filename"]: row["label"] for row in rows}
            return splits
    raise DataError(f"no miniImageNet split files train.csv, val.csv and test.csv in {folder} or "
                    f"{folder / 'splits' / 'ravi'}; put Ravi & Larochelle's split files there")


def image_folder_stores(folder: Path, image_size: int, cache_dir: str | None) -> dict[str, ClassStore]:
    """The class stores from ``images/`` (or ``images.zip``) and the split CSVs, decoded once and cached."""
    source = next((s for s in (folder / "images", folder / "images.zip") if s.exists()), None)
    if source is None:
        raise DataError(f"miniImageNet not found in {folder}: put its images/ folder (or images.zip) and the split "
                        f"CSVs there, or the pickles {PICKLE.format('train')} etc.; point data.root at the folder "
                        f"holding miniimagenet/")
    splits = read_csv_splits(folder)
    where = {name: (label, subset) for subset, files in splits.items() for name, label in files.items()}

    def locate(path: PurePosixPath) -> tuple[str, str] | None:
        return where.get(path.name)

    stores = load_stores(source, image_size, 3, locate, sorted(where.items()), cache_dir)
    for subset, files in splits.items():
        listed, found = Counter(files.values()), dict(zip(stores[subset].names, stores[subset].sizes.tolist()))
        short = sorted(label for label, count in listed.items() if found.get(label, 0) != count)
        if short:
            raise DataError(f"{source}: class {short[0]} of {subset}.csv has {found.get(short[0], 0)} of its "
                            f"{listed[short[0]]} images ({len(short)} class(es) incomplete); complete the copy")
    return stores


def pickle_stores(folder: Path, image_size: int) -> dict[str, ClassStore]:
    """The class stores from the ``mini-imagenet-cache-*.pkl`` files."""
    stores = {}
    for subset in SUBSETS:
        path = folder / PICKLE.format(subset)
        try:
            with open(path, "rb") as file:
                cache = pickle.load(file)
            data, class_dict = cache["image_data"], cache["class_dict"]
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as error:
            raise DataError(f"{path} is not a readable miniImageNet pickle ({type(error).__name__}: {error}); "
                            f"replace it") from None
        classes = {label: [image_array(Image.fromarray(data[i]), image_size, 3) for i in sorted(indices)]
                   for label, indices in class_dict.items()}
        stores[subset] = ClassStore.from_classes(classes)
    return stores


class MiniImageNetDataModule(ClassFolderDataModule):
    """Episodes over miniImageNet, Ravi split (see the module docstring for the files it reads).

    Args:
        root: folder holding ``miniimagenet/``; default ``$LIGHTNING_META_DATA``, else ``./data``.
        image_size: side of the images (84, the usual).
        cache_dir: where the decoded class stores are cached (default: next to the data, if writable).
        **kwargs: episode shapes, augmentation, normalisation and the rest, see :class:`EpisodicDataModule`.
    """

    def __init__(self, root: str | None = None, image_size: int = 84, cache_dir: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(path="miniimagenet", root=root, image_size=image_size, channels=3, cache_dir=cache_dir,
                         **kwargs)

    @property
    def name(self) -> str:
        return "miniimagenet/ravi"

    def stores(self) -> dict[str, ClassStore]:
        if self._stores is None:
            if all((self.path / PICKLE.format(subset)).is_file() for subset in SUBSETS):
                self._stores = pickle_stores(self.path, self.image_size)
            else:
                self._stores = image_folder_stores(self.path, self.image_size, self.cache_dir)
        return self._stores
