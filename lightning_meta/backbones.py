"""Embedding networks shared by all algorithms, found by name (``backbone: conv4`` in a config).

Beside this module's own networks, ``backbone: torchvision:<name>`` and ``backbone: timm:<name>`` take any
classification network of torchvision or of timm (an optional extra: ``pip install lightning-meta[timm]``) as an
embedding: its classifier removed, its pooled features the embedding. ``pretrained`` loads weights into it: ``true``,
the library's published weights (downloaded once into its cache); a path, a state dict saved from the same network.
"""

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


class ExternalBackbone(nn.Module):
    """A torchvision or timm network without its classifier, as an embedding [B, C, H, W] -> [B, D]. The networks
    take RGB: a grey image enters as three equal channels (the same as summing the first layer's weights over its
    input channels, which is how timm adapts a network to one channel)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


def state_dict_file(path: str, name: str) -> dict[str, Tensor]:
    """The weights saved at ``path`` for backbone ``name``; a missing or unreadable file is one ConfigError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise ConfigError(f"model.pretrained: cannot read weights for backbone {name} from {path} ({error}); give "
                          f"a file saved by torch.save(network.state_dict()), or true for the published "
                          f"weights") from None


def load_saved(net: nn.Module, path: str, name: str) -> None:
    """Loads the state dict file ``path`` into ``net`` (backbone ``name``): every weight of ``net`` must be there
    with its shape; others (a classifier ``net`` has not) are left out. A file that does not fit is one
    ConfigError."""
    saved, own = state_dict_file(path, name), net.state_dict()
    missing = [key for key in own if key not in saved]
    try:
        if missing:
            raise RuntimeError(f"{len(missing)} weights missing, e.g. {missing[0]}")
        net.load_state_dict({key: saved[key] for key in own})
    except RuntimeError as error:
        raise ConfigError(f"model.pretrained: {path} does not hold {name}'s weights ({str(error).splitlines()[0]}); "
                          f"save them from that network") from None


def published(build: Callable[..., nn.Module], name: str, backbone: str, **settings) -> nn.Module:
    """``build(name, **settings)``, a library's network, with the published weights where the settings ask for
    them: a download that fails (no internet, no cached copy) is one ConfigError."""
    try:
        return build(name, **settings)
    except (OSError, RuntimeError, ValueError) as error:
        raise ConfigError(f"cannot load {backbone}'s published weights ({str(error).splitlines()[0]}); connect to "
                          f"the internet once (the library caches them), or save them to a file and give "
                          f"model.pretrained: PATH") from None


def torchvision_network(name: str, pretrained: bool | str) -> nn.Module:
    """torchvision's classification network ``name`` with its last linear layer (the classifier) made the
    identity: published weights (``weights="DEFAULT"``) or a state dict file."""
    import torchvision.models

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ConfigError(f"torchvision has no classification network {name!r}; choose one of "
                          f"torchvision.models.list_models(), e.g. resnet18")
    net = published(torchvision.models.get_model, name, f"torchvision:{name}", weights="DEFAULT" if pretrained is True
                    else None)
    if isinstance(pretrained, str):
        load_saved(net, pretrained, f"torchvision:{name}")
    classifier = next(((parent, attribute) for parent in reversed(list(net.modules()))
                       for attribute, child in reversed(list(parent.named_children())) if isinstance(child, nn.Linear)),
                      None)  # the last linear layer, in the order the network lists its modules
    if classifier is None:
        raise ConfigError(f"torchvision:{name} has no linear classifier to remove; choose a network that ends in "
                          f"one, e.g. resnet18")
    setattr(*classifier, nn.Identity())
    return net


def timm_network(name: str, pretrained: bool | str) -> nn.Module:
    """timm's network ``name`` without its classifier (``num_classes=0``: pooled features): published weights
    (``pretrained=True``, from timm's hub) or a state dict file."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"backbone timm:{name} needs timm, an optional extra: pip install 'lightning-meta[timm]' "
                          f"(or pip install timm)") from None
    if not timm.is_model(name):
        raise ConfigError(f"timm has no network {name!r}; choose one of timm.list_models(), e.g. resnet18")
    net = published(timm.create_model, name, f"timm:{name}", pretrained=pretrained is True, num_classes=0)
    if isinstance(pretrained, str):  # loaded here, strictly: timm's own loading forgives missing weights
        load_saved(net, pretrained, f"timm:{name}")
    return net


EXTERNAL = {"torchvision": torchvision_network, "timm": timm_network}


def external_backbone(library: str, name: str, image_shape: tuple[int, ...], pretrained: bool | str) -> nn.Module:
    """``library:name`` as an embedding of images ``image_shape``, checked on one blank image first: the channels
    (grey or RGB) and a size the network can take."""
    if len(image_shape) != 3 or image_shape[0] not in (1, 3):
        raise ConfigError(f"backbone {library}:{name} embeds grey or RGB images (1 or 3, H, W), got input shape "
                          f"{tuple(image_shape)}; use a data set of images, or backbone: mlp")
    net = ExternalBackbone(EXTERNAL[library](name, pretrained))
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, *image_shape))
    except (RuntimeError, AssertionError, ValueError) as error:  # each network says it in its own way
        _, height, width = image_shape
        raise ConfigError(f"backbone {library}:{name} cannot embed {height}x{width} images "
                          f"({str(error).splitlines()[0]}); raise data.image_size") from None
    return net.train()


def build_backbone(name: str, image_shape: tuple[int, ...], pretrained: bool | str = False, **kwargs) -> nn.Module:
    """The backbone ``name`` for inputs ``image_shape``: one of this module's (``kwargs``: its settings, e.g.
    ``hidden``) or ``torchvision:<name>`` / ``timm:<name>`` (``pretrained``: their weights; ``kwargs`` unused)."""
    library, _, network = name.partition(":")
    if network and library in EXTERNAL:
        return external_backbone(library, network, tuple(image_shape), pretrained)
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}, or torchvision:<name> or "
                          f"timm:<name>")
    if pretrained:
        raise ConfigError(f"model.pretrained loads the published weights of a torchvision: or timm: backbone; "
                          f"{name} has none (a checkpoint of this project: --ckpt_path)")
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

    ``per_step(S)`` gives it S sets of weights and biases, [S, C], one per inner step of an adaptation (MAML++'s
    per-step batch-norm weights); ``step`` says which set a call uses. ``per_step_statistics(S)`` gives it S sets
    of running statistics (MAML++'s per-step running statistics): while ``record`` is a dict, every call adds its
    batch's mean and unbiased variance, [2, C], under its ``step``, for the learner to average and hand to
    ``update_running_statistics``; with ``use_running`` it normalises with set ``step`` instead of the batch's own.
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
        self.step = 0
        self.record: dict[int, list[Tensor]] | None = None
        self.use_running = False

    def per_step(self, steps: int) -> None:
        """One set of weights and biases per inner step, [steps, C], each starting as the current one."""
        for name in ("weight", "bias"):
            value = getattr(self, name).detach().expand(steps, -1).clone()
            if isinstance(getattr(self, name), nn.Parameter):
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def per_step_statistics(self, steps: int, momentum: float = 0.1) -> None:
        """S sets of running means and variances, [S, C], starting at 0 and 1, each moved by ``momentum`` towards
        the statistics ``update_running_statistics`` is given (nn.BatchNorm's rule)."""
        like = self.weight.new_empty(steps, self.weight.shape[-1])
        self.register_buffer("running_mean", torch.zeros_like(like))
        self.register_buffer("running_var", torch.ones_like(like))
        self.momentum = momentum

    @torch.no_grad()
    def update_running_statistics(self, statistics: Tensor) -> None:
        """running ← (1 − momentum) · running + momentum · statistics, for every set: statistics [S, 2, C] (mean,
        variance)."""
        statistics = statistics.to(self.running_mean.dtype)
        self.running_mean.lerp_(statistics[:, 0], self.momentum)
        self.running_var.lerp_(statistics[:, 1], self.momentum)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, *]
        weight, bias = self.weight, self.bias
        if weight.dim() == 2:  # per step: this step's set
            weight, bias = weight[self.step], bias[self.step]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.use_running:
            mean, var = self.running_mean[self.step].view(shape), self.running_var[self.step].view(shape)
            return (x - mean) * torch.rsqrt(var + self.eps) * weight.view(shape) + bias.view(shape)
        dims = [0, *range(2, x.dim())]
        ref = x if self.reference is None else x[: self.reference]
        if self.record is not None:
            at_least_float32 = ref.detach().to(torch.promote_types(ref.dtype, torch.float32))  # under autocast
            var, mean = torch.var_mean(at_least_float32, dims, correction=1)  # [C]
            self.record.setdefault(self.step, []).append(torch.stack([mean, var]))
        if self.native_kernel_applies(x):
            return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.eps)
        var, mean = torch.var_mean(ref, dims, correction=0, keepdim=True)  # [1, C, 1, ...]
        return (x - mean) * torch.rsqrt(var + self.eps) * weight.view(shape) + bias.view(shape)

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
