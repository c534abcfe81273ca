"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): 1,623 handwritten characters from 50 alphabets, 20
drawings each, read from the original distribution and decoded once into a cached uint8 class store.

Splits:
- ``vinyals``: the standard few-shot split of Vinyals et al. (2016) and Snell et al. (2017). Classes are
  character x rotation (0/90/180/270 degrees); the split is by alphabet, except that Gurmukhi characters
  42-45 are in test while the rest of Gurmukhi trains. 4,112 / 688 / 1,692 classes.
- ``lake``: the 30 background alphabets train and the 20 evaluation alphabets test (Lake et al.); five
  background alphabets (the Vinyals validation alphabets) are held out for validation. Rotations optional.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_meta.data.datamodule import EpisodicDataModule, default_data_root
from lightning_meta.data.store import ClassStore, cache_folder, decode_image
from lightning_meta.errors import DataError
from lightning_meta.io import load_cached, save_atomic

URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
ARCHIVES = ("images_background", "images_evaluation")
DRAWINGS = 20
ROTATIONS = (0, 90, 180, 270)
VAL_ALPHABETS = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
TEST_ALPHABETS = (
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)", "Oriya",
    "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
)  # fmt: skip
GURMUKHI_TEST = ("Gurmukhi/character42", "Gurmukhi/character43", "Gurmukhi/character44", "Gurmukhi/character45")
CACHE_VERSION = 1


@dataclass
class OmniglotCharacters:
    """Every drawing of every character, strokes bright (255) on black (0)."""

    images: Tensor  # [1623, 20, 1, S, S] uint8
    names: list[str]  # "Alphabet/characterNN", sorted
    background: Tensor  # [1623] bool: from images_background (Lake's training alphabets)

    @property
    def alphabets(self) -> list[str]:
        return [name.split("/")[0] for name in self.names]


def vinyals_subset(character: str) -> str:
    """The Vinyals split ('train', 'val' or 'test') of a character named 'Alphabet/characterNN'."""
    alphabet = character.split("/")[0]
    if alphabet in TEST_ALPHABETS or character in GURMUKHI_TEST:
        return "test"
    return "val" if alphabet in VAL_ALPHABETS else "train"


def lake_subset(character: str, background: bool) -> str:
    """The Lake split of a character: background alphabets train (five of them validate), evaluation tests."""
    if not background:
        return "test"
    return "val" if character.split("/")[0] in VAL_ALPHABETS else "train"


def split_store(chars: OmniglotCharacters, split: str, subset: str, rotations: bool) -> ClassStore:
    """The class store of one subset ('train', 'val', 'test') of a split ('vinyals' or 'lake')."""
    if split == "vinyals":
        keep = [i for i, name in enumerate(chars.names) if vinyals_subset(name) == subset]
    elif split == "lake":
        keep = [i for i, name in enumerate(chars.names) if lake_subset(name, bool(chars.background[i])) == subset]
    else:
        raise DataError(f"unknown Omniglot split {split!r}; use 'vinyals' or 'lake'")
    angles = ROTATIONS if rotations else (0,)
    index = torch.tensor(keep)
    base = chars.images[index]  # [C, 20, 1, S, S]
    images = torch.stack([torch.rot90(base, a // 90, dims=(-2, -1)) for a in angles], dim=1).flatten(0, 1)
    names = [f"{chars.names[i]}/rot{a:03d}" if rotations else chars.names[i] for i in keep for a in angles]
    alphabets = [chars.names[i].split("/")[0] for i in keep for _ in angles]
    group_names = sorted(set(alphabets))
    groups = torch.tensor([group_names.index(a) for a in alphabets])
    return ClassStore(images=images, names=names, groups=groups, group_names=group_names)


def load_characters(
    root: str | os.PathLike, image_size: int = 28, download: bool = False, cache_dir: str | os.PathLike | None = None
) -> OmniglotCharacters:
    """Reads ``root/omniglot/images_{background,evaluation}`` (zip or extracted folder), decoding once and
    caching the result per image size in ``cache_dir`` (default: ``root/omniglot`` when writable, else
    ``~/.cache/lightning_meta``)."""
    folder = Path(root) / "omniglot"
    sources = [_find_source(folder, name, download) for name in ARCHIVES]
    fingerprint = [CACHE_VERSION, image_size] + [_fingerprint(s) for s in sources]
    cache = cache_folder(folder, cache_dir, "omniglot") / f"omniglot_{image_size}.pt"
    cached = load_cached(cache, fingerprint)
    if cached is not None:
        return OmniglotCharacters(cached["images"], cached["names"], cached["background"])
    drawings: dict[str, list[tuple[str, np.ndarray]]] = {}
    background: dict[str, bool] = {}
    for archive, source in zip(ARCHIVES, sources):
        for path, data in _read_pngs(source):
            alphabet, character, filename = path.split("/")[-3:]
            name = f"{alphabet}/{character}"
            drawings.setdefault(name, []).append((filename, 255 - decode_image(data, image_size, 1, path)[0]))
            background[name] = archive == "images_background"
    names = sorted(drawings)
    for name in names:
        if len(drawings[name]) != DRAWINGS:
            raise DataError(f"Omniglot character {name} has {len(drawings[name])} drawings, expected {DRAWINGS}; "
                            f"the copy under {folder} is incomplete: replace it with the original zips")
    images = torch.from_numpy(np.stack([np.stack([a for _, a in sorted(drawings[n])]) for n in names]))
    chars = OmniglotCharacters(images[:, :, None], names, torch.tensor([background[n] for n in names]))
    save_atomic({"fingerprint": fingerprint, "images": chars.images, "names": names,
                  "background": chars.background}, cache)
    return chars


def _find_source(folder: Path, name: str, download: bool) -> Path:
    for candidate in (folder / name, folder / f"{name}.zip"):
        if candidate.exists():
            return candidate
    if not download:
        raise DataError(f"Omniglot not found: no {name}.zip or {name}/ in {folder}; put the original zips there, "
                        f"point data.root (or LIGHTNING_META_DATA) at the folder holding omniglot/, "
                        f"or set data.download: true")
    from torchvision.datasets.utils import download_url

    try:
        download_url(URL + f"{name}.zip", str(folder), f"{name}.zip")  # no md5: repacked copies are legitimate
    except Exception as error:
        raise DataError(f"downloading {URL}{name}.zip failed ({type(error).__name__}: {error}); fetch it by hand "
                        f"into {folder}, or point data.root (or LIGHTNING_META_DATA) at a copy") from None
    return folder / f"{name}.zip"


def _read_pngs(source: Path):
    if source.is_dir():
        for path in sorted(source.rglob("*.png")):
            yield path.relative_to(source.parent).as_posix(), path.read_bytes()
        return
    try:
        with zipfile.ZipFile(source) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.filename.endswith(".png"):
                    yield info.filename, zf.read(info)
    except zipfile.BadZipFile as error:
        raise DataError(f"{source} is not a readable zip ({error}); download it again or extract it there") from None


def _fingerprint(source: Path) -> list:
    if source.is_dir():
        return [source.name, sum(1 for _ in source.rglob("*.png"))]
    return [source.name, source.stat().st_size]


class OmniglotDataModule(EpisodicDataModule):
    """Episodes over Omniglot (see the module docstring for the splits).

    Args:
        root: folder holding ``omniglot/``; default ``$LIGHTNING_META_DATA``, else ``./data``.
        split: ``vinyals`` (character x rotation classes) or ``lake`` (background / evaluation alphabets).
        image_size: side of the square images (28 is the usual, 105 the original).
        rotations: rotations by 90 degrees as extra classes; always on for ``vinyals``, off by default for ``lake``.
        within_alphabet: draw every episode's classes from one alphabet (Lake's harder protocol).
        download: fetch the original zips into ``root/omniglot`` when they are missing.
        cache_dir: where the decoded class store is cached (default: next to the data, if writable).
        **kwargs: episode shapes and the rest, see :class:`EpisodicDataModule`.
    """

    group = "alphabet"
    bright_on_dark = True  # the drawings are inverted when decoded (load_characters)

    def __init__(
        self,
        root: str | None = None,
        split: str = "vinyals",
        image_size: int = 28,
        rotations: bool | None = None,
        within_alphabet: bool = False,
        download: bool = False,
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(within_group=within_alphabet, **kwargs)
        if split not in ("vinyals", "lake"):
            raise DataError(f"unknown Omniglot split {split!r}; use data.split: vinyals or lake")
        if rotations is False and split == "vinyals":
            raise DataError("the vinyals split is defined with rotated classes; drop data.rotations or use split: lake")
        if image_size < 1:
            raise DataError(f"data.image_size must be positive (got {image_size})")
        self.root = Path(root) if root is not None else default_data_root()
        self.split, self.image_size, self.download, self.cache_dir = split, image_size, download, cache_dir
        self.rotations = split == "vinyals" if rotations is None else rotations
        self._characters: OmniglotCharacters | None = None

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (1, self.image_size, self.image_size)

    @property
    def name(self) -> str:
        return f"omniglot/{self.split}"

    def prepare_data(self) -> None:
        load_characters(self.root, self.image_size, self.download, self.cache_dir)

    def build_store(self, subset: str) -> ClassStore:
        if self._characters is None:
            self._characters = load_characters(self.root, self.image_size, self.download, self.cache_dir)
        return split_store(self._characters, self.split, subset, self.rotations)
