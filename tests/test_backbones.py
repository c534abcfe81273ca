"""Backbones: ResNet-12 against hand-computed sizes and a functional re-implementation, and under torch.func."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from lightning_meta import MAML, ConfigError, Episode, ProtoNet, RelationNetwork
from lightning_meta.backbones import MetaBatchNorm, ResidualBlock, build_backbone, with_meta_batch_norm


@pytest.mark.parametrize("name, image_shape, shape", [
    ("resnet12", (3, 84, 84), (2, 640)),
    ("resnet12_maps", (3, 84, 84), (2, 640, 5, 5)),
    ("resnet12_maps", (3, 32, 32), (2, 640, 2, 2)),
])  # fmt: skip
def test_output_shapes(name, image_shape, shape):
    net = build_backbone(name, image_shape, hidden=64).eval()
    with torch.no_grad():
        assert net(torch.randn(2, *image_shape)).shape == shape


def test_parameter_count_by_hand():
    """Blocks c_in -> c_out: three 3x3 convs without bias, a 1x1 shortcut, four batch norms (weight and bias)."""
    widths = [3, 64, 160, 320, 640]
    expected = sum(9 * c_in * c_out + 2 * 9 * c_out * c_out + c_in * c_out + 4 * 2 * c_out
                   for c_in, c_out in zip(widths, widths[1:]))
    assert expected == 12_424_320  # about 12.4M, the figure commonly cited for this ResNet-12
    for name in ("resnet12", "resnet12_maps"):
        net = build_backbone(name, (3, 84, 84), hidden=64)
        assert sum(p.numel() for p in net.parameters()) == expected
        assert [(b.conv1.in_channels, b.conv3.out_channels) for b in net if isinstance(b, ResidualBlock)] == list(
            zip(widths, widths[1:]))


def reference_block(block: ResidualBlock, x: torch.Tensor, training: bool) -> torch.Tensor:
    """The block's formula in torch.nn.functional, read off its weights."""

    def bn(y, norm):
        mean, var = (None, None) if training else (norm.running_mean, norm.running_var)
        return F.batch_norm(y, mean, var, norm.weight, norm.bias, training=training, eps=norm.eps)

    def conv_bn(y, conv, norm, padding=1):
        return bn(F.conv2d(y, conv.weight, padding=padding), norm)

    out = F.leaky_relu(conv_bn(x, block.conv1, block.bn1), 0.1)
    out = F.leaky_relu(conv_bn(out, block.conv2, block.bn2), 0.1)
    out = conv_bn(out, block.conv3, block.bn3)
    shortcut = conv_bn(x, block.shortcut[0], block.shortcut[1], padding=0)
    return F.max_pool2d(F.leaky_relu(out + shortcut, 0.1), 2)


@pytest.mark.parametrize("training", [False, True])
def test_block_matches_functional_formula(training):
    torch.manual_seed(0)
    block = ResidualBlock(4, 6)
    for norm in (m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.normal_()
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 4, 10, 10)
    expected = reference_block(copy.deepcopy(block), x, training)
    with torch.no_grad():
        out = block.train(training)(x)
    assert out.shape == (3, 6, 5, 5)
    assert (out < 0).any()  # the negative slope of LeakyReLU is exercised
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_functional_call_with_meta_batch_norm(first_order):
    """MAML's path: per-task parameters under torch.func.vmap, against the module run task by task in plain tensor
    operations (float64, so that the tolerances are tight). ``first_order``: batched through F.batch_norm."""
    torch.manual_seed(0)
    net = with_meta_batch_norm(build_backbone("resnet12", (3, 16, 16), hidden=8)).double()
    norms = [m for m in net.modules() if isinstance(m, MetaBatchNorm)]
    assert norms
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    params = {k: torch.stack([v.detach(), v.detach() + 0.1 * torch.randn_like(v)]) for k, v in net.named_parameters()}
    x = torch.randn(2, 4, 3, 16, 16, dtype=torch.float64)  # 2 tasks of 4 images

    def f(p, x):
        return functional_call(net, p, (x,))

    def loss(p, x):
        return f(p, x).pow(2).sum()

    for norm in norms:
        norm.first_order = first_order
    out = vmap(f)(params, x)
    grads = vmap(torch.func.grad(loss))(params, x)
    for norm in norms:
        norm.first_order = False
    assert out.shape == (2, 4, 80)
    for t in range(2):
        task_net = copy.deepcopy(net)
        task_net.load_state_dict({k: v[t] for k, v in params.items()})
        expected = task_net(x[t])
        expected.pow(2).sum().backward()
        torch.testing.assert_close(out[t], expected, rtol=1e-9, atol=1e-10)
        for name, p in task_net.named_parameters():
            torch.testing.assert_close(grads[name][t], p.grad, rtol=1e-7, atol=1e-9)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("name", ["resnet12", "resnet12_maps"])
@pytest.mark.parametrize("image_shape, message", [((64,), "needs images"), ((3, 8, 8), "at least 16x16")])
def test_bad_input(name, image_shape, message):
    with pytest.raises(ConfigError, match=message):
        build_backbone(name, image_shape, hidden=8)


def test_protonet_and_relation_network_accept_it_by_name():
    torch.manual_seed(0)
    model = ProtoNet(image_shape=(3, 32, 32), backbone="resnet12", hidden=8)
    assert model.z_shape == (80,)
    n_way, k_shot, n_query = 5, 1, 2
    episode = Episode(
        support=torch.randn(1, n_way * k_shot, 3, 32, 32),
        support_labels=torch.arange(n_way).repeat(k_shot)[None],
        query=torch.randn(1, n_way * n_query, 3, 32, 32),
        query_labels=torch.arange(n_way).repeat(n_query)[None],
        n_way=n_way,
    )
    z_support, z_query = model.embed(episode)
    assert z_support.shape == (1, 5, 80) and z_query.shape == (1, 10, 80)
    loss, logits = model.meta_loss(episode)
    loss.backward()
    assert logits.shape == (1, 10, 5) and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    relation = RelationNetwork(image_shape=(3, 64, 64), backbone="resnet12_maps", hidden=8)
    assert relation.z_shape == (80, 4, 4)


def test_maml_meta_batch_vmap_matches_loop_on_colour_images():
    """vmap has no memory formats: a backbone with channels-last weights must run under vmap(grad(...)) on 3-channel
    images (a 1-channel image is channels-last already, which would hide a conversion inside the network)."""
    torch.manual_seed(0)
    shape = (3, 16, 16)
    model = MAML(shape, n_way=3, backbone="resnet12", hidden=4, inner_steps=1, inner_lr=0.3, meta_batch="vmap")
    labels = torch.arange(3).repeat(2, 1)
    episode = Episode(torch.randn(2, 3, *shape), labels, torch.randn(2, 3, *shape), labels, 3)
    vmapped = model.meta_loss(episode)[1]
    model.hparams.meta_batch = "loop"
    torch.testing.assert_close(vmapped, model.meta_loss(episode)[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, channels", [("conv4", 1), ("conv4", 3), ("conv4_strided", 1), ("conv4_maps", 3),
                                            ("resnet12", 3), ("koch", 1)])
def test_conv_weights_have_channels_last_strides(name, channels):
    """Every conv weight, also those that are the same memory in both orders (one input channel, ResNet-12's 1x1
    shortcuts), whose strides still make the conv kernel choose its order."""
    side = 105 if name == "koch" else 32
    net = build_backbone(name, (channels, side, side), hidden=8 if name != "koch" else 16)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].in_channels == channels
    for conv in convs:
        assert conv.weight.stride() == torch.empty(conv.weight.shape, memory_format=torch.channels_last).stride()


def test_speedups_off_runs_the_plain_computations_and_they_agree(monkeypatch):
    """``LIGHTNING_META_SPEEDUPS=0``: a conv4 built with the default memory order and batch norm in tensor operations
    (F.batch_norm is never called) give first-order MAML the same meta-loss and meta-gradient as the speed-ups."""
    torch.manual_seed(0)
    labels = torch.arange(3).repeat_interleave(2).repeat(2, 1)
    episode = Episode(torch.randn(2, 6, 3, 16, 16), labels, torch.randn(2, 6, 3, 16, 16), labels, 3)

    def meta_gradient(model: MAML) -> tuple[torch.Tensor, list[torch.Tensor]]:
        loss = model.meta_loss(episode)[0]
        return loss, torch.autograd.grad(loss, list(model.parameters()))

    fast = MAML((3, 16, 16), n_way=3, backbone="conv4", hidden=8, first_order=True, meta_batch="loop")
    conv = fast.net[0][1][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    fast_loss, fast_grads = meta_gradient(fast)
    monkeypatch.setenv("LIGHTNING_META_SPEEDUPS", "0")
    plain = MAML((3, 16, 16), n_way=3, backbone="conv4", hidden=8, first_order=True, meta_batch="loop")
    plain.load_state_dict(fast.state_dict())
    assert plain.net[0][1][0].weight.is_contiguous()

    def refuse(*args, **kwargs):
        raise AssertionError("F.batch_norm called with the speed-ups off")

    monkeypatch.setattr(F, "batch_norm", refuse)
    plain_loss, plain_grads = meta_gradient(plain)
    torch.testing.assert_close(plain_loss, fast_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(plain_grads, fast_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
