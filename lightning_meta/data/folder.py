"""Class-folder data sets: the images of a class in a folder named after it, decoded once into a class store.

A data set is a folder or a zip of one. Its splits come either from split files or from the folders:

- with ``splits`` (a folder holding ``train``, ``val`` and ``test`` files, ``.txt`` with one class name a line
  or ``.csv`` with a ``label`` column), the class of an image is the name of the folder holding it, wherever
  that folder is, so ``train/<class>/`` and ``test/<class>/`` of one class are pooled (as CIFAR-FS pools
  CIFAR-100's train and test images); classes no split names are left out;
- without, the data set is laid out as ``train/<class>/``, ``val/<class>/`` and ``test/<class>/``.

Classes are sorted by name and the images of a class by path, so class and item indices are the same on every
machine. Classes may hold different numbers of images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lightning_meta.data.datamodule import SUBSETS, EpisodicDataModule, default_data_root
from lightning_meta.data.store import ClassStore, cache_folder, decode_image
from lightning_meta.errors import DataError
from lightning_meta.io import load_cached, save_atomic

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
CACHE_VERSION = 1


def image_files(source: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    """(path inside ``source``, file bytes) of every image file in a folder or zip, sorted by path; hidden files
    and macOS resource forks are skipped."""
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        for path in paths:
            relative = PurePosixPath(path.relative_to(source).as_posix())
            if visible(relative):
                yield relative, path.read_bytes()
        return
    try:
        with zipfile.ZipFile(source) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                relative = PurePosixPath(info.filename)
                if not info.is_dir() and relative.suffix.lower() in IMAGE_SUFFIXES and visible(relative):
                    yield relative, archive.read(info)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{source} is not a readable zip ({error}); download it again or extract it there") from None


def visible(path: PurePosixPath) -> bool:
    """False for a hidden file or folder, or a macOS resource fork, anywhere in ``path``."""
    return not any(part.startswith(".") or part == "__MACOSX" for part in path.parts)


def empty_class_folders(source: Path) -> list[str]:
    """The empty folders of a folder data set (an empty class folder would otherwise vanish without a word)."""
    if not source.is_dir():
        return []
    return sorted(p.relative_to(source).as_posix() for p in source.rglob("*")
                  if p.is_dir() and visible(PurePosixPath(p.name)) and not any(p.iterdir()))


def read_split_file(path: Path) -> list[str]:
    """The class names a split file lists: one a line (``.txt``) or the ``label`` column (``.csv``)."""
    text = path.read_text()
    if path.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and "label" not in rows[0]:
            raise DataError(f"split file {path} has no 'label' column; give it the header filename,label")
        names = [row["label"] for row in rows]
    else:
        names = [line.strip() for line in text.splitlines()]
    return list(dict.fromkeys(n for n in names if n))


def find_split_files(folder: Path) -> dict[str, Path]:
    """``train``, ``val`` and ``test`` split files (``.txt`` or ``.csv``) in ``folder``."""
    found = {}
    for subset in SUBSETS:
        candidates = [folder / f"{subset}{suffix}" for suffix in (".txt", ".csv")]
        existing = [c for c in candidates if c.is_file()]
        if not existing:
            raise DataError(f"no split file {subset}.txt or {subset}.csv in {folder}; write one (a class name a "
                            f"line) or set data.splits to the folder that holds them")
        found[subset] = existing[0]
    return found


def class_splits(split_classes: dict[str, list[str]]) -> dict[str, str]:
    """class -> subset, from the class lists of the subsets; a class in two subsets is an error."""
    subset_of: dict[str, str] = {}
    for subset, names in split_classes.items():
        for name in names:
            if name in subset_of:
                raise DataError(f"class {name!r} is in both the {subset_of[name]} and the {subset} split; "
                                f"a class must belong to one split only: fix the split files")
            subset_of[name] = subset
    return subset_of


Locate = Callable[[PurePosixPath], "tuple[str, str] | None"]  # an image's path -> (class, subset), None: not used


def by_split_files(subset_of: dict[str, str]) -> Locate:
    """With split files: the class of an image is its folder's name, its subset the one that names the class."""

    def locate(path: PurePosixPath) -> tuple[str, str] | None:
        name = path.parent.name
        return (name, subset_of[name]) if len(path.parts) >= 2 and name in subset_of else None

    return locate


def by_split_folders(source: Path) -> Locate:
    """Without split files: images lie in ``<subset>/<class>/``."""

    def locate(path: PurePosixPath) -> tuple[str, str]:
        if len(path.parts) < 3 or path.parts[-3] not in SUBSETS:
            raise DataError(f"{source}: image {path} is not in train/<class>/, val/<class>/ or test/<class>/; lay "
                            f"the data set out that way or give split files with data.splits")
        return path.parent.name, path.parts[-3]

    return locate


def decode_classes(
    source: Path, image_size: int, channels: int, locate: Locate
) -> tuple[dict[str, list[np.ndarray]], dict[str, str]]:
    """The images of ``source`` decoded by class ([channels, size, size] uint8 each, in path order), and the
    subset of each class; a class found in two subsets is an error."""
    classes: dict[str, list[np.ndarray]] = {}
    subsets: dict[str, str] = {}
    for path, data in image_files(source):
        found = locate(path)
        if found is None:
            continue
        name, subset = found
        if subsets.setdefault(name, subset) != subset:
            raise DataError(f"{source}: class {name!r} is in both the {subsets[name]} and the {subset} split; a "
                            f"class must belong to one split only")
        classes.setdefault(name, []).append(decode_image(data, image_size, channels, f"{path} in {source}"))
    if not classes:
        raise DataError(f"no images of the data set's classes in {source}; check data.path (and data.splits)")
    return classes, subsets


def load_stores(
    source: Path,
    image_size: int,
    channels: int,
    locate: Locate,
    layout: object,
    cache_dir: str | os.PathLike | None = None,
    groups: dict[str, str] | None = None,
) -> dict[str, ClassStore]:
    """The class store of each subset of the images in ``source``, decoded once and cached; ``layout`` (e.g. the
    class -> subset table) goes into the cache key with the source's size, the image size and the groups."""
    fingerprint = [CACHE_VERSION, image_size, channels, _fingerprint(source), repr(layout),
                   sorted((groups or {}).items())]
    key = hashlib.sha256(repr(fingerprint).encode()).hexdigest()[:12]
    cache = cache_folder(source.parent, cache_dir, "class_folders") / f"{source.stem}_{image_size}_{key}.pt"
    cached = load_cached(cache, fingerprint)
    if cached is not None:
        return {subset: ClassStore(**cached[subset]) for subset in SUBSETS}
    images, subsets = decode_classes(source, image_size, channels, locate)
    stores = {}
    for subset in SUBSETS:
        names = [n for n in images if subsets[n] == subset]
        if not names:
            raise DataError(f"{source}: the {subset} split has no classes; give it classes (in its split file or "
                            f"its {subset}/ folder)")
        stores[subset] = ClassStore.from_classes({n: images[n] for n in names}, groups)
    save_atomic({"fingerprint": fingerprint, **{subset: store.state() for subset, store in stores.items()}}, cache)
    return stores


def load_class_folder(
    source: Path,
    image_size: int,
    channels: int,
    split_classes: dict[str, list[str]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    groups: dict[str, str] | None = None,
) -> dict[str, ClassStore]:
    """The class stores of a class-folder data set (see the module docstring), split by ``split_classes``
    (subset -> class names) or, if None, by its ``train/``, ``val/`` and ``test/`` folders."""
    if split_classes is None:
        empty = empty_class_folders(source)
        if empty:
            raise DataError(f"{source}: class folder {empty[0]} holds no images; add its images or remove it")
        return load_stores(source, image_size, channels, by_split_folders(source), None, cache_dir, groups)
    subset_of = class_splits(split_classes)
    stores = load_stores(source, image_size, channels, by_split_files(subset_of), sorted(subset_of.items()),
                         cache_dir, groups)
    missing = sorted(set(subset_of) - {n for store in stores.values() for n in store.names})
    if missing:
        raise DataError(f"{source}: the split files name {len(missing)} class(es) with no images there, e.g. "
                        f"{missing[0]!r}; check data.path and the split files")
    return stores


def _fingerprint(source: Path) -> list:
    if not source.exists():
        raise DataError(f"no data set at {source}; point data.path at a folder (or zip) of class folders")
    if source.is_dir():
        files = [p for p in source.rglob("*") if p.is_file()]
        return [source.name, len(files), sum(p.stat().st_size for p in files)]
    return [source.name, source.stat().st_size]


class ClassFolderDataModule(EpisodicDataModule):
    """Episodes over your own images: a folder (or zip) of class folders (see the module docstring).

        data:
          class_path: lightning_meta.data.ClassFolderDataModule
          init_args: {path: /data/birds, splits: /data/birds/splits, image_size: 84}

    Args:
        path: the folder or zip; relative paths are taken under ``root``.
        splits: folder with the ``train``, ``val`` and ``test`` split files; default: ``train/``, ``val/`` and
            ``test/`` folders in ``path``.
        root: base of a relative ``path``; default ``$LIGHTNING_META_DATA``, else ``./data``.
        image_size: side of the square images every image is resized to once, when it is decoded.
        channels: 3 for RGB, 1 for grey.
        cache_dir: where the decoded class stores are cached (default: next to the data, if writable).
        **kwargs: episode shapes, augmentation, normalisation and the rest, see :class:`EpisodicDataModule`.
    """

    def __init__(
        self,
        path: str,
        splits: str | None = None,
        root: str | None = None,
        image_size: int = 84,
        channels: int = 3,
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if image_size < 1 or channels not in (1, 3):
            raise DataError(f"data.image_size must be positive and data.channels 1 or 3 (got {image_size}, {channels})")
        base = Path(root) if root is not None else default_data_root()
        self.path = Path(path) if Path(path).is_absolute() else base / path
        self.splits = None if splits is None else Path(splits)
        self.image_size, self.channels, self.cache_dir = image_size, channels, cache_dir
        self._stores: dict[str, ClassStore] | None = None

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def name(self) -> str:
        return f"{self.path.stem}/{'split folders' if self.splits is None else self.splits.name}"

    def split_classes(self) -> dict[str, list[str]] | None:
        """The class names of each subset from the split files (None: the data set's own split folders)."""
        if self.splits is None:
            return None
        return {subset: read_split_file(path) for subset, path in find_split_files(self.splits).items()}

    def groups(self) -> dict[str, str] | None:
        """class -> group (for within-group episodes); none for a plain class-folder data set."""
        return None

    def stores(self) -> dict[str, ClassStore]:
        if self._stores is None:
            self._stores = load_class_folder(self.path, self.image_size, self.channels, self.split_classes(),
                                             self.cache_dir, self.groups())
        return self._stores

    def prepare_data(self) -> None:
        self.stores()

    def build_store(self, subset: str) -> ClassStore:
        return self.stores()[subset]
