"""Class-folder data sets, CIFAR-FS / FC100 and miniImageNet: what is read, how it is split, what is rejected."""

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from lightning_meta.data import (
    CIFARFewShotDataModule,
    ClassFolderDataModule,
    ClassStore,
    DataError,
    EpisodeSampler,
    MiniImageNetDataModule,
    cifar,
    folder,
)
from lightning_meta.data.cifar import CIFAR_FS_EVAL, FC100_SUPERCLASSES, SUPERCLASSES, benchmark_classes


def png(value: int | tuple, size: int = 8) -> bytes:
    """A lossless size x size image of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), value if isinstance(value, tuple) else (value,) * 3).save(buffer, "PNG")
    return buffer.getvalue()


def write(root, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def zipped(path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


SPLIT_FOLDERS = {  # class b has 3 images, the others 2; colour = 10 * class + image, so every pixel is known
    "train/b/2.png": png(22), "train/b/0.png": png(20), "train/b/1.png": png(21),
    "train/a/0.png": png(10), "train/a/1.png": png(11),
    "val/c/0.png": png(30), "val/c/1.png": png(31),
    "test/d/0.png": png(40), "test/d/1.png": png(41),
    "README.md": b"not an image", "train/.hidden/0.png": b"garbage",
}  # fmt: skip


def test_split_folders_sorted_with_known_pixels_and_counts(tmp_path):
    write(tmp_path / "set", SPLIT_FOLDERS)
    stores = folder.load_class_folder(tmp_path / "set", image_size=8, channels=3, cache_dir=tmp_path / "cache")
    train = stores["train"]
    assert train.names == ["a", "b"] and stores["val"].names == ["c"] and stores["test"].names == ["d"]
    assert train.images.shape == (2, 3, 3, 8, 8) and train.images.dtype == torch.uint8
    assert train.counts.tolist() == [2, 3] and train.items_per_class == 2
    assert train.images[1, :, 0, 0, 0].tolist() == [20, 21, 22]  # items in path order
    assert train.images[0, :2, :, 3, 5].tolist() == [[10] * 3, [11] * 3] and int(train.images[0, 2].max()) == 0
    assert stores["val"].counts is None  # equal classes need no counts


def test_grey_images(tmp_path):
    write(tmp_path / "set", {k: v for k, v in SPLIT_FOLDERS.items() if k.endswith(".png")})
    stores = folder.load_class_folder(tmp_path / "set", image_size=4, channels=1, cache_dir=tmp_path / "cache")
    assert stores["test"].images.shape == (1, 2, 1, 4, 4) and stores["test"].images[0, 1].unique().tolist() == [41]


def test_split_files_pool_folders_of_a_class_and_leave_out_unnamed_classes(tmp_path):
    files = {"cifar/train/x/0.png": png(1), "cifar/test/x/9.png": png(2), "cifar/train/y/0.png": png(3),
             "cifar/train/z/0.png": png(4), "cifar/test/w/0.png": png(5)}
    zipped(tmp_path / "set.zip", files)
    write(tmp_path / "splits", {"train.txt": b"x\n\n", "val.csv": b"filename,label\na.png,y\nb.png,y\n",
                                "test.txt": b"w\n"})
    dm = ClassFolderDataModule(path=str(tmp_path / "set.zip"), splits=str(tmp_path / "splits"), image_size=8,
                               cache_dir=str(tmp_path / "cache"), n_way=1 + 1, k_shot=1, n_query=1)
    stores = dm.stores()
    assert stores["train"].names == ["x"] and stores["val"].names == ["y"] and stores["test"].names == ["w"]
    assert stores["train"].images[0, :, 0, 0, 0].tolist() == [2, 1]  # by path: test/x/9.png before train/x/0.png
    assert "z" not in {n for s in stores.values() for n in s.names}


@pytest.mark.parametrize("files,splits,problem", [
    ({**SPLIT_FOLDERS, "train/a/2.png": b"not a png"}, None, "cannot read image train/a/2.png"),
    ({**SPLIT_FOLDERS, "test/a/0.png": png(1)}, None, "class 'a' is in both the test and the train split"),
    ({**SPLIT_FOLDERS, "loose.png": png(1)}, None, "loose.png is not in train/<class>/"),
    (SPLIT_FOLDERS, {"train.txt": b"a\nb\n", "val.txt": b"c\nb\n", "test.txt": b"d\n"}, "'b' is in both"),
    (SPLIT_FOLDERS, {"train.txt": b"a\nq\n", "val.txt": b"c\n", "test.txt": b"d\n"}, "no images there, e.g. 'q'"),
    (SPLIT_FOLDERS, {"train.txt": b"a\n", "val.txt": b"c\n"}, "no split file test.txt or test.csv"),
    (SPLIT_FOLDERS, {"train.txt": b"a\n", "val.txt": b"c\n", "test.csv": b"file,class\nx,d\n"}, "no 'label' column"),
])  # fmt: skip
def test_bad_data_is_rejected_with_a_clear_message(tmp_path, files, splits, problem):
    write(tmp_path / "set", files)
    if splits:
        write(tmp_path / "splits", splits)
    dm = ClassFolderDataModule(path=str(tmp_path / "set"), splits=str(tmp_path / "splits") if splits else None,
                               image_size=8, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=problem):
        dm.prepare_data()


def test_empty_class_folder_and_missing_data_are_rejected(tmp_path):
    write(tmp_path / "set", SPLIT_FOLDERS)
    (tmp_path / "set" / "val" / "e").mkdir()
    with pytest.raises(DataError, match="class folder val/e holds no images"):
        folder.load_class_folder(tmp_path / "set", 8, 3, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="no data set at"):
        folder.load_class_folder(tmp_path / "nothing", 8, 3, cache_dir=tmp_path / "cache")
    (tmp_path / "bad.zip").write_bytes(b"PK but not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        folder.load_class_folder(tmp_path / "bad.zip", 8, 3, cache_dir=tmp_path / "cache")


def test_decoded_once_then_read_from_the_cache_until_the_data_changes(tmp_path, monkeypatch):
    write(tmp_path / "set", SPLIT_FOLDERS)
    first = folder.load_class_folder(tmp_path / "set", 8, 3, cache_dir=tmp_path / "cache")

    def fail(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folder, "decode_image", fail)
    again = folder.load_class_folder(tmp_path / "set", 8, 3, cache_dir=tmp_path / "cache")
    assert torch.equal(again["train"].images, first["train"].images) and again["train"].counts.tolist() == [2, 3]
    write(tmp_path / "set", {"train/a/2.png": png(12)})
    with pytest.raises(AssertionError, match="decoded again"):
        folder.load_class_folder(tmp_path / "set", 8, 3, cache_dir=tmp_path / "cache")


def test_unequal_classes_never_draw_padding_and_draw_every_real_item():
    images = torch.arange(2 * 6).view(2, 6, 1).to(torch.uint8)  # item i of class c holds 6c + i
    store = ClassStore(images, ["a", "b"], torch.zeros(2, dtype=torch.long), ["g"], counts=torch.tensor([2, 6]))
    sampler = EpisodeSampler(store, "train", n_way=2, k_shot=1, n_query=1)
    seen = {0: set(), 1: set()}
    for i in range(300):
        classes, items = sampler.indices(i)
        for c, row in zip(classes.tolist(), items.tolist()):
            seen[c] |= set(row)
    assert seen == {0: {0, 1}, 1: set(range(6))}
    with pytest.raises(DataError, match="smallest class has only 2 items"):
        EpisodeSampler(store, "train", n_way=2, k_shot=2, n_query=1)


def test_counts_equal_to_the_slots_give_the_episodes_of_an_unpadded_store():
    images = torch.randint(0, 255, (10, 7, 1, 2, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    plain = ClassStore(images, [str(c) for c in range(10)], torch.zeros(10, dtype=torch.long), ["g"])
    counted = ClassStore(images, plain.names, plain.groups, ["g"], counts=torch.full((10,), 7))
    a, b = (EpisodeSampler(s, "train", 5, 2, 3, seed=4) for s in (plain, counted))
    for i in range(20):
        assert all(torch.equal(x, y) for x, y in zip(a.indices(i), b.indices(i)))


def test_transforms_per_split(tmp_path):
    files = {k: v for k, v in SPLIT_FOLDERS.items() if k.endswith(".png") and "hidden" not in k}
    write(tmp_path / "set", {**files, "val/e/0.png": png(50), "val/e/1.png": png(51)})
    dm = ClassFolderDataModule(path=str(tmp_path / "set"), image_size=8, cache_dir=str(tmp_path / "cache"),
                               n_way=2, k_shot=1, n_query=1, train_transform=v2.RandomErasing(p=1.0, value=0),
                               eval_transform=v2.RandomInvert(p=1.0))
    dm.setup("fit")
    train, val = dm.samplers["train"][0], dm.samplers["val"][0]
    assert int(train.support.min()) == 0 and int(train.support.max()) <= 22  # erased, not inverted
    assert set(val.support.unique().tolist()) <= {255 - v for v in (30, 31, 50, 51)}  # inverted, not erased


def test_cifar_splits_equal_the_published_files(cifar100_root):
    splits = cifar100_root / "splits"
    for benchmark in ("cifar_fs", "fc100"):
        classes = benchmark_classes(benchmark)
        for subset in ("train", "val", "test"):
            assert classes[subset] == sorted((splits / benchmark / f"{subset}.txt").read_text().split())
    assert [len(benchmark_classes("cifar_fs")[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert [len(v) for v in FC100_SUPERCLASSES.values()] == [12, 4, 4]
    assert len({c for fines in SUPERCLASSES.values() for c in fines}) == 100 and len(CIFAR_FS_EVAL["test"]) == 20


@pytest.mark.parametrize("benchmark", ["cifar_fs", "fc100"])
def test_the_shared_jpeg_copy_gives_600_images_a_class(cifar100_root, benchmark):
    dm = CIFARFewShotDataModule(benchmark=benchmark, root=str(cifar100_root.parent))
    stores = dm.stores()
    assert dm.name == f"{benchmark}/cifar100_jpeg_q75.zip" and not dm.from_pickles
    for subset, store in stores.items():
        assert store.names == benchmark_classes(benchmark)[subset] and store.counts is None
        assert store.images.shape[1:] == (600, 3, 32, 32)
    test = stores["test"]
    if benchmark == "fc100":
        assert sorted(test.group_names) == sorted(FC100_SUPERCLASSES["test"])
    with zipfile.ZipFile(cifar100_root / "cifar100_jpeg_q75.zip") as archive:  # the first baby image, by path
        first = sorted(n for n in archive.namelist() if n.split("/")[1:2] == ["baby"])[0]
        expected = np.asarray(Image.open(io.BytesIO(archive.read(first))).convert("RGB")).transpose(2, 0, 1)
    assert first.startswith("test/") and np.array_equal(test.images[test.names.index("baby"), 0].numpy(), expected)


class FakeCIFAR100:
    """torchvision's CIFAR100 on made-up images: 100 classes x 2 train images and 1 test image each."""

    classes = sorted(cifar.SUPERCLASS_OF)

    def __init__(self, root, train: bool, download: bool) -> None:
        rng = np.random.default_rng(0 if train else 1)
        per = 2 if train else 1
        self.data = rng.integers(0, 256, (100 * per, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 100 for i in range(100 * per)]


def test_cifar_pickles_and_a_class_folder_copy_give_the_same_stores(tmp_path, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    (tmp_path / "cifar100" / cifar.PICKLES).mkdir(parents=True)
    from_pickles = CIFARFewShotDataModule(root=str(tmp_path), n_way=2, k_shot=1, n_query=1)
    files = {}
    for train in (True, False):
        part = FakeCIFAR100(None, train, False)
        for i, (array, label) in enumerate(zip(part.data, part.targets)):
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, "PNG")
            files[f"{'train' if train else 'test'}/{part.classes[label]}/{i:04d}.png"] = buffer.getvalue()
    zipped(tmp_path / "copy.zip", files)
    from_copy = CIFARFewShotDataModule(root=str(tmp_path), source=str(tmp_path / "copy.zip"),
                                       cache_dir=str(tmp_path / "cache"), n_way=2, k_shot=1, n_query=1)
    assert from_pickles.from_pickles and from_pickles.name == "cifar_fs/cifar-100"
    a, b = from_pickles.stores(), from_copy.stores()
    for subset in ("train", "val", "test"):
        assert a[subset].names == b[subset].names == benchmark_classes("cifar_fs")[subset]
        assert a[subset].images.shape[1] == 3
    # the copy orders a class's images by path (test/ before train/), the pickles train images first
    assert torch.equal(a["test"].images[:, [2, 0, 1]], b["test"].images)


def test_cifar_without_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="data.download: true"):
        CIFARFewShotDataModule(root=str(tmp_path)).prepare_data()
    with pytest.raises(DataError, match="use data.benchmark: cifar_fs or fc100"):
        CIFARFewShotDataModule(root=str(tmp_path), benchmark="cifar10")


MINI = {"train": ["n01", "n02"], "val": ["n03", "n04"], "test": ["n05", "n06"]}


def fake_miniimagenet(root, layout: str) -> dict[str, bytes]:
    """Six classes of two 84x84 images in one of the on-disk formats; returns the images by file name."""
    folder_ = root / "miniimagenet"
    folder_.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {f"{label}0000000{i}.jpg": rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)
              for labels in MINI.values() for label in labels for i in (1, 2)}
    if layout == "pickles":
        for subset, labels in MINI.items():
            names = [n for n in images if n[:3] in labels]
            class_dict = {label: [i for i, n in enumerate(names) if n.startswith(label)][::-1] for label in labels}
            data = np.stack([images[n] for n in names])
            (folder_ / f"mini-imagenet-cache-{subset}.pkl").write_bytes(
                pickle.dumps({"image_data": data, "class_dict": class_dict}))
        return images
    encoded = {}
    for name, array in images.items():  # PNG bytes under the .jpg names: lossless, so every format agrees
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        encoded[f"images/{name}"] = buffer.getvalue()
    if layout == "folder":
        write(folder_, encoded)
        csv_folder = folder_
    else:
        zipped(folder_ / "images.zip", encoded)
        csv_folder = folder_ / "splits" / "ravi"
    for subset, labels in MINI.items():
        rows = "".join(f"{n},{n[:3]}\n" for n in images if n[:3] in labels)
        write(csv_folder, {f"{subset}.csv": f"filename,label\n{rows}".encode()})
    return images


def test_miniimagenet_reads_the_same_class_stores_from_every_format(tmp_path):
    stores = {}
    for layout in ("folder", "zip", "pickles"):
        root = tmp_path / layout
        images = fake_miniimagenet(root, layout)
        dm = MiniImageNetDataModule(root=str(root), cache_dir=str(root / "cache"), n_way=2, k_shot=1, n_query=1)
        stores[layout] = dm.stores()
    for subset, labels in MINI.items():
        expected = np.stack([np.stack([images[f"{label}0000000{i}.jpg"].transpose(2, 0, 1) for i in (1, 2)])
                             for label in labels])
        for layout in stores:
            assert stores[layout][subset].names == labels
            assert np.array_equal(stores[layout][subset].images.numpy(), expected), (layout, subset)


def test_miniimagenet_incomplete_or_missing(tmp_path):
    fake_miniimagenet(tmp_path, "folder")
    (tmp_path / "miniimagenet" / "images" / "n0400000002.jpg").unlink()
    with pytest.raises(DataError, match="class n04 of val.csv has 1 of its 2 images"):
        MiniImageNetDataModule(root=str(tmp_path), cache_dir=str(tmp_path / "cache")).prepare_data()
    with pytest.raises(DataError, match="miniImageNet not found"):
        MiniImageNetDataModule(root=str(tmp_path / "empty")).prepare_data()
