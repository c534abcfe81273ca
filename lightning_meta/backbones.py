"""Embedding networks shared by all algorithms, found by name (``backbone: conv4`` in a config)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta import speedups
from lightning_meta.errors import ConfigError

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable:
    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES[name] = factory
        return factory

    return add


def conv_block(in_channels: int, out_channels: int, pool: bool = True) -> nn.Sequential:
    """conv 3x3 -> batch norm -> ReLU (-> 2x2 max-pool)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def image_channels(name: str, image_shape: tuple[int, ...], min_side: int, needs: str, fix: str) -> int:
    """The channels of ``image_shape``, after checking that it is an image of at least ``min_side`` pixels a side
    (the message says why the backbone ``needs`` that, and the ``fix``)."""
    if len(image_shape) != 3:
        raise ConfigError(f"{name} needs images (C, H, W), got input shape {tuple(image_shape)}; use backbone: mlp")
    channels, height, width = image_shape
    if min(height, width) < min_side:
        raise ConfigError(f"{name} {needs} at least {min_side}x{min_side} pixels, got {height}x{width}; {fix}")
    return channels


def four_halvings(name: str, image_shape: tuple[int, ...]) -> int:
    """The channels of an image that four 2x2 poolings leave non-empty (conv4, ResNet-12)."""
    return image_channels(name, image_shape, 16, "halves the image four times and needs", "raise data.image_size")


def channels_last(net: nn.Module) -> nn.Module:
    """Stores the conv weights of ``net`` in channels-last memory order, which the CPU (oneDNN) and GPU conv kernels
    run fastest on: a conv with channels-last weights computes channels-last whatever the order of its input. A
    speed-up (``lightning_meta.speedups``): the reference is PyTorch's default order.

    A weight with one input channel (or a 1x1 kernel) is the same memory in both orders, but its strides still tell
    the kernel which order to run: with the default strides, conv4's first layer on Omniglot runs in the default
    order, which made ProtoNet's Omniglot training markedly slower as measured (docs/distributed.md). Under DDP, the optimisation-based
    learners' gradient of such a weight comes back with the default strides, and DDP warns "Grad strides do not
    match bucket view strides" as it copies those few values into its bucket; the command line silences that
    warning (``cli.quiet``)."""
    if speedups.enabled():
        net.to(memory_format=torch.channels_last)
    return net


class GlobalAveragePool(nn.Module):
    """[B, C, H, W] -> [B, C], the mean over positions."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((-2, -1))


class ResidualBlock(nn.Module):
    """The residual block of ResNet-12 (Oreshkin et al., 2018; Lee et al., 2019): three 3x3 convs with batch norm,
    LeakyReLU(0.1) after the first two; plus a 1x1 conv and batch norm shortcut; LeakyReLU(0.1) of the sum, then a
    2x2 max-pool. Nothing in place, so that ``torch.func`` can run it."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.pool(self.act(out + self.shortcut(x)))


@register_backbone("conv4")
def conv4(image_shape: tuple[int, ...], hidden: int = 64, flatten: bool = True) -> nn.Sequential:
    """The four-block ConvNet of Vinyals et al. (2016) and Snell et al. (2017): 64-d embeddings at 28x28."""
    channels = four_halvings("conv4", image_shape)
    layers = [conv_block(channels, hidden), conv_block(hidden, hidden), conv_block(hidden, hidden),
              conv_block(hidden, hidden)]
    net = nn.Sequential(*layers, nn.Flatten()) if flatten else nn.Sequential(*layers)
    return channels_last(net)


@register_backbone("conv4_strided")
def conv4_strided(image_shape: tuple[int, ...], hidden: int = 64) -> nn.Sequential:
    """The Omniglot network of Finn et al. (2017): four blocks of stride-2 3x3 conv, batch norm and ReLU (no
    pooling), then the features averaged over positions: 64-d at 28x28."""
    if len(image_shape) != 3:
        raise ConfigError(f"conv4_strided needs images (C, H, W), got input shape {tuple(image_shape)}")
    channels = image_shape[0]
    layers: list[nn.Module] = []
    for c_in in (channels, hidden, hidden, hidden):
        layers += [nn.Conv2d(c_in, hidden, 3, stride=2, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
    net = nn.Sequential(*layers, GlobalAveragePool())
    return channels_last(net)


@register_backbone("conv4_maps")
def conv4_maps(image_shape: tuple[int, ...], hidden: int = 64) -> nn.Sequential:
    """The embedding of Sung et al. (2018): four blocks of 3x3 conv, batch norm and ReLU; the first two unpadded
    and max-pooled, the last two padded and not pooled. Returns feature maps: [B, 64, 5, 5] at 28x28."""
    channels = image_channels("conv4_maps", image_shape, 10, "needs", "raise data.image_size")
    unpadded = [nn.Conv2d(channels, hidden, 3), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                nn.Conv2d(hidden, hidden, 3), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    net = nn.Sequential(*unpadded, conv_block(hidden, hidden, pool=False),
                        conv_block(hidden, hidden, pool=False))
    return channels_last(net)


def resnet12_blocks(name: str, image_shape: tuple[int, ...], hidden: int) -> list[nn.Module]:
    """The layers of ResNet-12 before any pooling: four :class:`ResidualBlock` of hidden x (1, 2.5, 5, 10) filters
    (64-160-320-640 at ``hidden`` 64; 2.5 x hidden rounded down). ``name`` is the backbone's, for the messages."""
    widths = [four_halvings(name, image_shape), hidden, hidden * 5 // 2, hidden * 5, hidden * 10]
    return [ResidualBlock(a, b) for a, b in zip(widths, widths[1:])]


@register_backbone("resnet12")
def resnet12(image_shape: tuple[int, ...], hidden: int = 64) -> nn.Sequential:
    """The ResNet-12 of TADAM (Oreshkin et al., 2018) and MetaOptNet (Lee et al., 2019), then global average
    pooling: 640-d embeddings at ``hidden`` 64 (5x5 maps before pooling at 84x84), about 12.4M parameters.
    MetaOptNet's DropBlock regularisation is not included."""
    net = nn.Sequential(*resnet12_blocks("resnet12", image_shape, hidden), GlobalAveragePool())
    return channels_last(net)


@register_backbone("resnet12_maps")
def resnet12_maps(image_shape: tuple[int, ...], hidden: int = 64) -> nn.Sequential:
    """:func:`resnet12` without the pooling at the end, for the Relation Network: feature maps [B, 10 x hidden, h, w],
    640 x 5 x 5 at 84x84. DropBlock is not included."""
    net = nn.Sequential(*resnet12_blocks("resnet12_maps", image_shape, hidden))
    return channels_last(net)


@register_backbone("koch")
def koch(image_shape: tuple[int, ...], hidden: int = 4096) -> nn.Sequential:
    """The Siamese twin of Koch, Zemel & Salakhutdinov (2015) for 105x105 images: conv 64@10x10, max-pool,
    128@7x7, max-pool, 128@4x4, max-pool, 256@4x4 (each conv followed by ReLU), then a ``hidden``-unit
    (4,096) fully connected layer with sigmoid."""
    channels = image_channels("koch", image_shape, 65, "is built for 105x105 images and needs",
                              "set data.image_size: 105")
    convs = nn.Sequential(
        nn.Conv2d(channels, 64, 10), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 7), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(128, 128, 4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(128, 256, 4), nn.ReLU(inplace=True), nn.Flatten(),
    )  # fmt: skip
    features = convs(torch.zeros(1, *image_shape)).shape[1]  # 256 * 6 * 6 at 105x105
    layers = [*convs, nn.Linear(features, hidden), nn.Sigmoid()]
    return channels_last(nn.Sequential(*layers))


@register_backbone("pixels")
def pixels(image_shape: tuple[int, ...], hidden: int = 0) -> nn.Flatten:
    """The input itself, flattened to a vector (MANN's encoding of Omniglot images); ``hidden`` is unused."""
    return nn.Flatten()


@register_backbone("mlp")
def mlp(image_shape: tuple[int, ...], hidden: int = 64, layers: int = 2) -> nn.Sequential:
    """``layers`` ReLU layers of ``hidden`` units on flattened inputs (vector data: the synthetic set, sinusoids)."""
    sizes = [math.prod(image_shape)] + [hidden] * layers
    body: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes, sizes[1:]):
        body += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*body)


def build_backbone(name: str, image_shape: tuple[int, ...], **kwargs) -> nn.Module:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](tuple(image_shape), **kwargs)


@contextmanager
def batch_statistics(net: nn.Module) -> Iterator[None]:
    """Inside, the ``nn.BatchNorm`` layers of ``net`` normalise with the statistics of the batch at hand even in
    eval mode, and leave their running statistics as they were (PyTorch's ``track_running_stats=False``)."""
    norms = [m for m in net.modules()
             if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and m.track_running_stats]
    running = [(m.running_mean, m.running_var) for m in norms]
    for norm in norms:
        norm.track_running_stats, norm.running_mean, norm.running_var = False, None, None
    try:
        yield
    finally:
        for norm, (mean, var) in zip(norms, running):
            norm.track_running_stats, norm.running_mean, norm.running_var = True, mean, var


class MetaBatchNorm(nn.Module):
    """Batch norm in plain tensor operations, always on the statistics of the batch it is given (no running
    averages), for networks that are adapted by gradient steps inside the training step.

    Unlike ``F.batch_norm``, whose second derivative is wrong under ``torch.func.vmap`` (functorch#534), every
    operation here has exact derivatives of every order, batched or not. With ``reference = n`` the mean and
    variance come from the first ``n`` examples only (the support set), and all examples are normalised with them.
    With ``first_order = True`` (for learners that never differentiate through their inner steps) it calls
    ``F.batch_norm`` instead: the same values and first derivatives, from PyTorch's native kernel, which is faster
    (a speed-up, ``lightning_meta.speedups``: the tensor operations are the reference).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        weight, bias = torch.ones(num_features), torch.zeros(num_features)
        if affine:
            self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)
        self.eps = eps
        self.reference: int | None = None
        self.first_order = False

    def forward(self, x: Tensor) -> Tensor:  # [B, C, *]
        if not self.native_kernel_applies(x):
            dims = [0, *range(2, x.dim())]
            ref = x if self.reference is None else x[: self.reference]
            var, mean = torch.var_mean(ref, dims, correction=0, keepdim=True)  # [1, C, 1, ...]
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)
        return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)

    def native_kernel_applies(self, x: Tensor) -> bool:
        """Whether the speed-up computes this call: first derivatives only, statistics of the whole batch, the
        speed-ups on, and an x that F.batch_norm takes under vmap (the weights' dtype, more than one value a
        channel)."""
        return (self.first_order and self.reference is None and speedups.enabled() and x.dtype == self.weight.dtype
                and x.numel() > x.shape[1])


def with_meta_batch_norm(net: nn.Module) -> nn.Module:
    """Replaces every ``nn.BatchNorm1d/2d`` of ``net`` (in place) by a :class:`MetaBatchNorm` with its weights."""
    for name, child in net.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            norm = MetaBatchNorm(child.num_features, child.eps, child.affine)
            if child.affine:
                norm.load_state_dict({"weight": child.weight.detach(), "bias": child.bias.detach()})
            setattr(net, name, norm)
        else:
            with_meta_batch_norm(child)
    return net
