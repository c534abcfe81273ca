"""The batched augmentations against torchvision's own functions, image by image with the same parameters."""

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from lightning_meta.data import DataError, EpisodeSampler
from lightning_meta.data.augment import ColorJitter, RandomAffine, RandomCrop, RandomHorizontalFlip, is_batched
from lightning_meta.data.store import ClassStore


def images(dtype: torch.dtype, channels: int = 3, n: int = 12) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (n, channels, 9, 9), dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.float() / 255


def test_random_crop_equals_pad_then_crop() -> None:
    x = images(torch.uint8)
    crop = RandomCrop(size=7, padding=2)
    params = crop.draw(x)
    out = crop.apply(x, **params)
    for image, top, left, got in zip(x, params["top"], params["left"], out):
        expected = TF.crop(TF.pad(image, [2]), int(top), int(left), 7, 7)
        assert torch.equal(got, expected)
    positions = torch.cat([params["top"], params["left"]])
    assert positions.min() >= 0 and positions.max() <= 9 + 4 - 7


def test_random_crop_draws_every_position_and_rejects_a_window_too_large() -> None:
    torch.manual_seed(0)
    tops = RandomCrop(size=7, padding=2).draw(torch.zeros(2000, 1, 9, 9))["top"]
    assert set(tops.tolist()) == set(range(7))
    with pytest.raises(DataError, match="do not fit"):
        RandomCrop(size=14, padding=2)(torch.zeros(1, 1, 9, 9))


def test_flip_mirrors_exactly_the_drawn_images() -> None:
    x = images(torch.uint8)
    flip = RandomHorizontalFlip(p=0.5)
    params = flip.draw(x)
    assert 0 < int(params["flip"].sum()) < len(x)
    out = flip.apply(x, **params)
    for image, flipped, got in zip(x, params["flip"], out):
        assert torch.equal(got, TF.horizontal_flip(image) if flipped else image)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("channels", [3, 1])
def test_color_jitter_equals_torchvision_in_each_images_order(dtype: torch.dtype, channels: int) -> None:
    x = images(dtype, channels, n=24)
    jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=(0.2, 1.8))
    params = jitter.draw(x)
    before = x.clone()
    out = jitter.apply(x, **params)
    assert torch.equal(x, before)  # the input is left as it was
    functions = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
                 "saturation": TF.adjust_saturation}
    orders = set()
    for i, image in enumerate(x):
        order = [ColorJitter.OPERATIONS[j] for j in params["order"][i]]
        orders.add(tuple(order))
        for name in order:
            image = functions[name](image, float(params[name][i]))
        if dtype == torch.uint8:  # the same truncations; float32 factors may move a value across a level
            assert (out[i].int() - image.int()).abs().max() <= 1
            assert (out[i] != image).float().mean() < 0.02
        else:
            torch.testing.assert_close(out[i], image, atol=1e-5, rtol=0)
    assert len(orders) > 3  # the order is drawn per image
    assert params["brightness"].min() >= 0.6 and params["brightness"].max() <= 1.4
    assert params["saturation"].min() >= 0.2 and params["saturation"].max() <= 1.8


def test_color_jitter_rejects_negative_factors() -> None:
    with pytest.raises(DataError, match="brightness"):
        ColorJitter(brightness=-0.1)
    with pytest.raises(DataError, match="contrast"):
        ColorJitter(contrast=(1.5, 0.5))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_random_affine_equals_torchvision_image_by_image(dtype: torch.dtype, interpolation: str) -> None:
    torch.manual_seed(1)
    x = torch.randint(0, 256, (40, 2, 12, 10), dtype=torch.uint8)  # not square: width and height kept apart
    x = x if dtype == torch.uint8 else x.float() / 255
    affine = RandomAffine(degrees=30, translate=(0.2, 0.1), scale=(0.7, 1.3), shear=(-20, 20, -10, 15),
                          interpolation=interpolation, fill=0.25 if dtype == torch.float32 else 7)
    params = affine.draw(x)
    out = affine.apply(x, **params)
    assert out.dtype == dtype and out.shape == x.shape
    for i, image in enumerate(x):
        expected = TF.affine(image, angle=float(params["angle"][i]),
                             translate=[int(params["tx"][i]), int(params["ty"][i])], scale=float(params["scale"][i]),
                             shear=[float(params["shear_x"][i]), float(params["shear_y"][i])],
                             interpolation=v2.InterpolationMode(interpolation), fill=affine.fill)
        if dtype == torch.uint8:  # float32 rounding may move a sampling point across a pixel or half a level
            assert (out[i].int() - expected.int()).abs().max() <= (1 if interpolation == "bilinear" else 255)
            assert (out[i] != expected).float().mean() < 0.01
        else:
            assert (out[i] - expected).abs().gt(1e-4).float().mean() < 0.01
    shifts = torch.stack([params["tx"], params["ty"]])
    assert torch.equal(shifts, shifts.round()) and shifts[0].abs().max() <= 2 and shifts[1].abs().max() <= 1
    assert params["angle"].abs().max() <= 30 and params["shear_y"].min() >= -10 and params["shear_y"].max() <= 15
    assert params["scale"].min() >= 0.7 and params["scale"].max() <= 1.3
    assert len(set(params["angle"].tolist())) == len(x)  # drawn per image


def test_random_affine_moves_a_pixel_where_the_matrix_says() -> None:
    """A hand-worked case: a 90° turn about the centre of a 5x5 image (torchvision's affine turns clockwise for a
    positive angle) takes the top right pixel to the bottom right; a shift by (-2, 1) takes it 2 left and 1 down."""
    image = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    image[0, 0, 0, 4] = 200
    affine = RandomAffine(degrees=0)
    zero = torch.zeros(1, dtype=torch.float64)
    turned = affine.apply(image, angle=zero + 90, tx=zero, ty=zero, scale=zero + 1, shear_x=zero, shear_y=zero)
    assert turned[0, 0].nonzero().tolist() == [[4, 4]] and int(turned[0, 0, 4, 4]) == 200
    shifted = affine.apply(image, angle=zero, tx=zero - 2, ty=zero + 1, scale=zero + 1, shear_x=zero, shear_y=zero)
    assert shifted[0, 0].nonzero().tolist() == [[1, 2]]
    with pytest.raises(DataError, match="RandomAffine"):
        RandomAffine(degrees=10, shear=(1, 2, 3))


def test_batched_transforms_keep_leading_dimensions_and_compose() -> None:
    composed = v2.Compose([RandomCrop(9, padding=1), RandomHorizontalFlip(), ColorJitter(brightness=0.2),
                           RandomAffine(degrees=10)])
    assert is_batched(composed) and not is_batched(v2.Compose([RandomCrop(9), v2.RandomHorizontalFlip()]))
    x = torch.randint(0, 256, (2, 3, 3, 9, 9), dtype=torch.uint8)
    assert composed(x).shape == x.shape and composed(x).dtype == torch.uint8


def test_sampler_applies_a_batched_transform_per_image_and_reproducibly() -> None:
    """Every image of an episode gets its own crop: with 20 images and 49 positions, the episode's images are
    not all shifted alike; the same episode index gives the same images again."""
    store = ClassStore(torch.full((5, 4, 1, 9, 9), 255, dtype=torch.uint8), [f"c{i}" for i in range(5)],
                       torch.zeros(5, dtype=torch.long), ["g"])
    sampler = EpisodeSampler(store, "train", n_way=5, k_shot=1, n_query=3, transform=RandomCrop(9, padding=3))
    episode = sampler[7]
    images = torch.cat([episode.support[0], episode.query[0]])  # [20, 1, 9, 9]: white where the image is
    masks = {tuple((image[0] > 0).flatten().tolist()) for image in images}
    assert len(masks) > 5
    assert torch.equal(sampler[7].query, episode.query) and not torch.equal(sampler[8].query, episode.query)
