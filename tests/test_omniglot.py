import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_meta.data import DataError, OmniglotDataModule
from lightning_meta.data.omniglot import load_characters, split_store


def test_all_characters_and_drawings(omniglot):
    assert omniglot.images.shape == (1623, 20, 1, 28, 28)
    assert omniglot.images.dtype == torch.uint8
    assert len(set(omniglot.alphabets)) == 50
    assert omniglot.names == sorted(omniglot.names)
    assert int(omniglot.background.sum()) == 964


@pytest.mark.parametrize("subset,count", [("train", 4112), ("val", 688), ("test", 1692)])
def test_vinyals_split_equals_the_published_files(omniglot, data_root, subset, count):
    published = (data_root / "omniglot" / "splits" / "vinyals" / f"{subset}.txt").read_text().split()
    store = split_store(omniglot, "vinyals", subset, rotations=True)
    assert len(published) == count
    assert sorted(store.names) == sorted(published)
    assert store.names == sorted(store.names)


def test_lake_split(omniglot):
    stores = {s: split_store(omniglot, "lake", s, rotations=False) for s in ("train", "val", "test")}
    background = stores["train"].names + stores["val"].names
    assert len(background) == 964 and len(stores["test"].names) == 659
    assert len({n.split("/")[0] for n in background}) == 30
    assert len({n.split("/")[0] for n in stores["test"].names}) == 20
    assert not {n.split("/")[0] for n in stores["train"].names} & {n.split("/")[0] for n in stores["val"].names}
    assert split_store(omniglot, "lake", "test", rotations=True).num_classes == 4 * 659


def test_images_match_an_independent_decoding(omniglot, data_root):
    """Decode one drawing straight from the zip with PIL and compare, unrotated and rotated by 90 degrees."""
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as zf:
        raw = Image.open(io.BytesIO(zf.read("images_evaluation/Tengwar/character03/1533_04.png"))).convert("L")
    small = raw.resize((28, 28), Image.Resampling.LANCZOS)
    expected = 255 - np.asarray(small)
    expected_rot = 255 - np.asarray(small.rotate(90))  # PIL rotates counter-clockwise
    store = split_store(omniglot, "vinyals", "test", rotations=True)
    index = store.names.index("Tengwar/character03/rot000")
    assert np.array_equal(store.images[index, 3, 0].numpy(), expected)
    assert np.array_equal(store.images[store.names.index("Tengwar/character03/rot090"), 3, 0].numpy(), expected_rot)
    assert store.group_names[int(store.groups[index])] == "Tengwar"


def fake_omniglot(root, make_zip: bool):
    """Two tiny alphabets in the original layout, as zips or as extracted folders."""
    folder = root / "omniglot"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for archive, alphabets in (("images_background", ["Alpha", "Beta"]), ("images_evaluation", ["Gamma"])):
        files = {}
        for alphabet in alphabets:
            for c in (1, 2):
                for d in range(1, 21):
                    image = Image.fromarray((rng.random((105, 105)) > 0.2).astype(np.uint8) * 255).convert("1")
                    buffer = io.BytesIO()
                    image.save(buffer, format="PNG")
                    files[f"{archive}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png"] = buffer.getvalue()
        if make_zip:
            with zipfile.ZipFile(folder / f"{archive}.zip", "w") as zf:
                for name, data in files.items():
                    zf.writestr(name, data)
        else:
            for name, data in files.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)


def test_zips_and_extracted_folders_read_the_same(tmp_path):
    fake_omniglot(tmp_path / "z", make_zip=True)
    fake_omniglot(tmp_path / "f", make_zip=False)
    a = load_characters(tmp_path / "z", image_size=20, cache_dir=tmp_path / "cache_z")
    b = load_characters(tmp_path / "f", image_size=20, cache_dir=tmp_path / "cache_f")
    assert a.names == b.names == ["Alpha/character01", "Alpha/character02", "Beta/character01", "Beta/character02",
                                  "Gamma/character01", "Gamma/character02"]
    assert torch.equal(a.images, b.images) and a.images.shape == (6, 20, 1, 20, 20)
    assert a.background.tolist() == [True] * 4 + [False] * 2
    cached = load_characters(tmp_path / "z", image_size=20, cache_dir=tmp_path / "cache_z")
    assert torch.equal(cached.images, a.images) and (tmp_path / "cache_z" / "omniglot_20.pt").exists()


def test_missing_data_without_download_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="Omniglot not found.*data.download: true"):
        load_characters(tmp_path)


def test_corrupt_zip_is_rejected(tmp_path):
    fake_omniglot(tmp_path, make_zip=True)
    (tmp_path / "omniglot" / "images_evaluation.zip").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="not a readable zip"):
        load_characters(tmp_path, cache_dir=tmp_path / "cache")


def test_within_alphabet_datamodule(data_root):
    dm = OmniglotDataModule(root=str(data_root), split="lake", within_alphabet=True, n_way=20, k_shot=1, n_query=1)
    dm.setup("test")
    sampler = dm.samplers["test"]
    for i in range(20):
        classes, _ = sampler.indices(i)
        assert len({sampler.store.names[c].split("/")[0] for c in classes.tolist()}) == 1
