"""Embedding networks shared by all algorithms, found by name (``backbone: conv4`` in a config)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

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


class ChannelsLast(nn.Module):
    """Puts images in channels-last memory order, which the CPU (oneDNN) and GPU conv kernels run fastest on."""

    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last)


@register_backbone("conv4")
def conv4(image_shape: tuple[int, ...], hidden: int = 64, flatten: bool = True) -> nn.Sequential:
    """The four-block ConvNet of Vinyals et al. (2016) and Snell et al. (2017): 64-d embeddings at 28x28."""
    if len(image_shape) != 3:
        raise ConfigError(f"conv4 needs images (C, H, W), got input shape {tuple(image_shape)}; use backbone: mlp")
    channels, height, width = image_shape
    if min(height, width) < 16:
        raise ConfigError(f"conv4 halves the image four times and needs at least 16x16 pixels, got {height}x{width}; "
                          f"raise data.image_size")
    layers = [ChannelsLast(), conv_block(channels, hidden), conv_block(hidden, hidden), conv_block(hidden, hidden),
              conv_block(hidden, hidden)]
    net = nn.Sequential(*layers, nn.Flatten()) if flatten else nn.Sequential(*layers)
    return net.to(memory_format=torch.channels_last)


@register_backbone("mlp")
def mlp(image_shape: tuple[int, ...], hidden: int = 64, layers: int = 2) -> nn.Sequential:
    """A ReLU multilayer perceptron on flattened inputs (for vector data such as the synthetic set)."""
    sizes = [math.prod(image_shape)] + [hidden] * layers
    body: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        body += [nn.Linear(a, b)] + ([nn.ReLU()] if i < layers - 1 else [])
    return nn.Sequential(*body)


def build_backbone(name: str, image_shape: tuple[int, ...], **kwargs) -> nn.Module:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](tuple(image_shape), **kwargs)
