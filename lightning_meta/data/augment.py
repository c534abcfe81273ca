"""Augmentation of a whole stack of images in one call, every image with its own random parameters.

A torchvision v2 transform draws one set of random parameters per call, so an episode's images are augmented
one at a time, each with its own Python round trips, which can take a large part of a training step (RESULTS.md,
"Throughput": augmentation). The transforms here take images
[*, C, H, W] (uint8 or float) and draw the parameters of each image independently; given the same parameters,
each computes what the torchvision transform of the same name computes on one image, including the rounding of
uint8 images after every colour operation. The episode sampler hands them all the images of an episode at once
(under the episode's random seed); they serve alone or composed with ``torchvision.transforms.v2.Compose``.
They are a speed-up (``lightning_meta.speedups``) whose reference is one ``class_path`` away: the torchvision
transform of the same name, which the sampler applies image by image (tests/test_augment.py holds the two equal):

    train_transform:
      class_path: lightning_meta.data.augment.RandomAffine
      init_args: {degrees: 10, translate: [0.02, 0.02], scale: [0.8, 1.2], shear: [-16.7, 16.7, -16.7, 16.7]}

    train_transform:
      class_path: torchvision.transforms.v2.Compose
      init_args:
        transforms:
          - class_path: lightning_meta.data.augment.RandomCrop
            init_args: {size: 32, padding: 4}
          - class_path: lightning_meta.data.augment.RandomHorizontalFlip
          - class_path: lightning_meta.data.augment.ColorJitter
            init_args: {brightness: 0.4, contrast: 0.4, saturation: 0.4}
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from lightning_meta.errors import DataError


class BatchTransform(nn.Module):
    """A transform of a stack of images [*, C, H, W] with random parameters drawn per image: ``draw`` them for
    images [B, C, H, W], ``apply`` them."""

    def draw(self, images: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def apply(self, images: Tensor, **params: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        flat = images.reshape(-1, *images.shape[-3:])
        out = self.apply(flat, **self.draw(flat))
        return out.reshape(*images.shape[:-3], *out.shape[1:])


def is_batched(transform: Callable[[Tensor], Tensor] | None) -> bool:
    """Whether ``transform`` takes a whole stack of images: a BatchTransform, or a v2.Compose of them only."""
    if isinstance(transform, v2.Compose):
        return all(is_batched(t) for t in transform.transforms)
    return isinstance(transform, BatchTransform)


class RandomCrop(BatchTransform):
    """``v2.RandomCrop(size, padding)``: pad every side with ``padding`` zeros, then crop a random size x size
    window of each image."""

    def __init__(self, size: int, padding: int = 0) -> None:
        super().__init__()
        if size < 1 or padding < 0:
            raise DataError(f"RandomCrop needs size >= 1 and padding >= 0 (got {size}, {padding})")
        self.size, self.padding = size, padding

    def draw(self, images: Tensor) -> dict[str, Tensor]:
        height, width = images.shape[-2:]
        if min(height, width) + 2 * self.padding < self.size:
            raise DataError(f"RandomCrop: {self.size}x{self.size} windows do not fit {height}x{width} images "
                            f"padded by {self.padding}; lower size or raise padding")
        batch, slack = images.shape[0], 2 * self.padding - self.size + 1
        return {"top": torch.randint(height + slack, (batch,)), "left": torch.randint(width + slack, (batch,))}

    def apply(self, images: Tensor, top: Tensor, left: Tensor) -> Tensor:
        padded = F.pad(images, [self.padding] * 4)  # [B, C, H + 2p, W + 2p]
        window, width = torch.arange(self.size), padded.shape[-1]
        rows, cols = top[:, None] + window, left[:, None] + window  # [B, s] each
        pixels = (rows[:, :, None] * width + cols[:, None, :]).flatten(1)  # [B, s*s] into the flattened image
        crops = padded.flatten(2).gather(2, pixels[:, None].expand(-1, images.shape[1], -1))
        return crops.view(*images.shape[:2], self.size, self.size)


class RandomHorizontalFlip(BatchTransform):
    """``v2.RandomHorizontalFlip(p)``: mirror each image left to right with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise DataError(f"RandomHorizontalFlip needs a probability p in [0, 1] (got {p})")
        self.p = p

    def draw(self, images: Tensor) -> dict[str, Tensor]:
        return {"flip": torch.rand(images.shape[0]) < self.p}

    def apply(self, images: Tensor, flip: Tensor) -> Tensor:
        return torch.where(flip[:, None, None, None], images.flip(-1), images)


class ColorJitter(BatchTransform):
    """``v2.ColorJitter(brightness, contrast, saturation)``: each image gets factors drawn uniformly from
    [max(0, 1 - v), 1 + v] (or a given [min, max]) and the three adjustments in a random order of its own.
    Hue is not offered."""

    OPERATIONS = ("brightness", "contrast", "saturation")

    def __init__(self, brightness: float | tuple[float, float] = 0.0, contrast: float | tuple[float, float] = 0.0,
                 saturation: float | tuple[float, float] = 0.0) -> None:
        super().__init__()
        self.ranges = {name: self.factor_range(name, value) for name, value in
                       zip(self.OPERATIONS, (brightness, contrast, saturation))}

    @staticmethod
    def factor_range(name: str, value: float | tuple[float, float]) -> tuple[float, float] | None:
        number = isinstance(value, (int, float))
        low, high = (max(0.0, 1 - value), 1 + value) if number else value
        if (number and value < 0) or not 0 <= low <= high:
            raise DataError(f"ColorJitter {name} must be a number >= 0 or a range [min, max] with 0 <= min <= max "
                            f"(got {value})")
        return None if (low, high) == (1, 1) else (low, high)

    def draw(self, images: Tensor) -> dict[str, Tensor]:
        batch = images.shape[0]
        params = {name: torch.empty(batch).uniform_(*r) for name, r in self.ranges.items() if r is not None}
        params["order"] = torch.rand(batch, len(self.OPERATIONS)).argsort(dim=1)  # [B, 3] operation indices
        return params

    def apply(self, images: Tensor, order: Tensor, **factors: Tensor) -> Tensor:
        x = images.to(torch.float32, copy=True)  # adjusted in place, image group by image group
        for step in range(len(self.OPERATIONS)):
            for index, name in enumerate(self.OPERATIONS):
                if name not in factors:
                    continue
                chosen = torch.nonzero(order[:, step] == index).flatten()  # the images adjusted by it now
                if len(chosen):
                    x[chosen] = self.adjust(name, x[chosen], factors[name][chosen], images.is_floating_point())
        return x.to(images.dtype)

    @staticmethod
    def adjust(name: str, x: Tensor, factor: Tensor, is_float: bool) -> Tensor:
        """One adjustment of images [B, C, H, W] (floats; uint8 values when not ``is_float``) by factors [B], as
        torchvision.transforms.v2.functional does it: a blend of the image with black (brightness), its mean grey
        level (contrast) or its grey image (saturation), clipped, and for uint8 images truncated to whole levels."""
        if name == "brightness":
            other = torch.zeros(())
        elif x.shape[1] == 1:
            if name == "saturation":
                return x
            other = x.mean(dim=(-3, -2, -1), keepdim=True)
        else:
            r, g, b = x.unbind(dim=1)
            grey = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114)[:, None]  # [B, 1, H, W]
            grey = grey if is_float else grey.floor_()
            other = grey.mean(dim=(-3, -2, -1), keepdim=True) if name == "contrast" else grey
        factor = factor[:, None, None, None]
        out = (x * factor + other * (1 - factor)).clamp_(0, 1.0 if is_float else 255.0)
        return out if is_float else out.floor_()


class RandomAffine(BatchTransform):
    """``v2.RandomAffine(degrees, translate, scale, shear, interpolation, fill)`` about the image centre: each image
    gets a rotation angle in [min, max] degrees (or [-degrees, degrees]), a shift of a whole number of pixels, at
    most translate * width and translate * height, a scale in [min, max] and shears along x and y in degrees
    (a number s gives x in [-s, s]; two numbers an x range; four an x and a y range). Pixels from outside the
    image get ``fill``."""

    def __init__(self, degrees: float | tuple[float, float], translate: tuple[float, float] | None = None,
                 scale: tuple[float, float] | None = None, shear: float | tuple[float, ...] | None = None,
                 interpolation: str = "nearest", fill: float = 0.0) -> None:
        super().__init__()
        number = isinstance(degrees, (int, float))
        self.degrees = (-degrees, degrees) if number else tuple(degrees)
        shears = () if shear is None else (-shear, shear) if isinstance(shear, (int, float)) else tuple(shear)
        self.shear = (*shears, 0.0, 0.0, 0.0, 0.0)[:4]
        self.translate, self.scale = translate or (0.0, 0.0), scale or (1.0, 1.0)
        if ((number and degrees < 0) or len(self.degrees) != 2 or len(shears) not in (0, 2, 4)
                or not all(0 <= t <= 1 for t in self.translate) or min(self.scale) <= 0
                or interpolation not in ("nearest", "bilinear")):
            raise DataError("RandomAffine needs degrees >= 0 or [min, max], translate fractions in [0, 1], scales > 0, "
                            "shear as 1, 2 or 4 numbers and interpolation nearest or bilinear (got "
                            f"{degrees}, {translate}, {scale}, {shear}, {interpolation})")
        self.interpolation, self.fill = interpolation, fill

    def draw(self, images: Tensor) -> dict[str, Tensor]:
        batch, (height, width) = images.shape[0], images.shape[-2:]
        uniform = lambda low, high: torch.empty(batch, dtype=torch.float64).uniform_(low, high)  # noqa: E731
        shift = [self.translate[0] * width, self.translate[1] * height]  # the largest shift, in pixels
        return {"angle": uniform(*self.degrees), "tx": uniform(-shift[0], shift[0]).round(),
                "ty": uniform(-shift[1], shift[1]).round(), "scale": uniform(*self.scale),
                "shear_x": uniform(*self.shear[:2]), "shear_y": uniform(*self.shear[2:])}

    def apply(self, images: Tensor, angle: Tensor, tx: Tensor, ty: Tensor, scale: Tensor, shear_x: Tensor,
              shear_y: Tensor) -> Tensor:
        """Samples each output pixel p at M⁻¹ p, with M = T · C · R(angle) S(scale) SHy(shear_y) SHx(shear_x) · C⁻¹
        (T the shift, C the move to the centre), as torchvision's affine does."""
        height, width = images.shape[-2:]
        rot, sx, sy = angle.deg2rad(), shear_x.deg2rad(), shear_y.deg2rad()
        a = (rot - sy).cos() / sy.cos()  # R S SHy SHx without the scale: [[a, b], [c, d]], determinant 1
        b = -(a * sx.tan() + rot.sin())
        c = (rot - sy).sin() / sy.cos()
        d = rot.cos() - c * sx.tan()
        inverse = torch.stack([d, -b, -c, a], dim=1).view(-1, 2, 2) / scale[:, None, None]  # [B, 2, 2]
        offset = -(inverse @ torch.stack([tx, ty], dim=1)[:, :, None])  # [B, 2, 1]: the shift undone
        theta = torch.cat([inverse, offset], dim=2).float()  # [B, 2, 3], pixel units about the centre
        xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width)
        ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height)
        base = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width),
                            torch.ones(height, width)], dim=-1).view(1, height * width, 3)  # output pixels
        half = torch.tensor([0.5 * width, 0.5 * height])
        grid = base.expand(len(images), -1, -1).bmm(theta.transpose(1, 2) / half)  # [B, H*W, 2] in [-1, 1]
        x = images if images.is_floating_point() else images.float()
        inside = torch.ones_like(x[:, :1])
        out = F.grid_sample(torch.cat([x, inside], dim=1), grid.view(-1, height, width, 2), mode=self.interpolation,
                            padding_mode="zeros", align_corners=False)
        out, inside = out[:, :-1], out[:, -1:]
        if self.interpolation == "nearest":
            out = torch.where(inside < 0.5, torch.full_like(out, self.fill), out)
        else:
            out = (out - self.fill) * inside + self.fill
        return out if images.is_floating_point() else out.round_().to(images.dtype)
