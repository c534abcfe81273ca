"""Mixed precision: every algorithm trains and tests under ``trainer.precision: bf16-mixed`` on the CPU, and MAML's
inner loop is safe under float16."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_cli import TINY
from test_distributed import CONFIGS
from torch import nn

from lightning_meta import cli
from lightning_meta.algorithms import MAML


# Under torch.func.vmap autocast adds a layer's bias in float32 (pytorch/pytorch#192617), so its output is float32
# although the product ran in bfloat16; ANIL runs all its layers under vmap, so its autocast is seen on the loop
VMAP_FREE = {"anil.yaml": ["--model.meta_batch", "loop"]}


@pytest.mark.parametrize("config, name", CONFIGS)
def test_every_algorithm_trains_in_bf16_mixed_precision(config, name, tmp_path, monkeypatch):
    """Autocast reaches its layers (some linear or convolution layer, or F.conv2d as Meta Networks calls it, gives
    bfloat16 outputs in training; under torch.func.vmap a layer with a bias gives float32, pytorch/pytorch#192617),
    and the test metric is finite."""
    dtypes = set()

    def record(module: nn.Module, args, output) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)) and torch.is_grad_enabled():
            dtypes.add(output.dtype)

    def recording_conv2d(*args, **kwargs) -> torch.Tensor:
        output = conv2d(*args, **kwargs)
        if torch.is_grad_enabled():
            dtypes.add(output.dtype)
        return output

    conv2d = F.conv2d
    monkeypatch.setattr(F, "conv2d", recording_conv2d)

    hook = nn.modules.module.register_module_forward_hook(record)
    try:
        metrics = cli.main([
            "--config", config, "--data", "SyntheticDataModule", "--trainer.precision", "bf16-mixed",
            "--trainer.max_steps", "3", "--data.batches_per_epoch", "3", "--data.tasks_per_batch", "2",
            "--data.val_episodes", "2", "--data.test_episodes", "4", "--data.eval_tasks_per_batch", "2",
            "--log_root", str(tmp_path), *TINY, *VMAP_FREE.get(config, []),
        ])  # fmt: skip
    finally:
        hook.remove()
    assert torch.bfloat16 in dtypes
    assert math.isfinite(metrics["test/acc"])


def test_maml_inner_gradients_survive_float16_autocast():
    """A conv4 MAML whose output layer is scaled by 1e-4, so that the support loss's gradients reaching the first
    layers are about 1e-5: taken in float16 they are off by more than 30%; MAML takes them in float32, so its
    adapted θ' under float16 autocast equals θ' computed without autocast."""
    torch.manual_seed(0)
    model = MAML(image_shape=(1, 28, 28), n_way=5, backbone="conv4", hidden=8)
    theta = model.meta_parameters()
    with torch.no_grad():
        theta["1.weight"].mul_(1e-4)
    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    reference = model.adapt(theta, x, y, steps=1, alpha=0.4, first_order=False)
    with torch.autocast("cpu", dtype=torch.float16):
        naive = torch.func.grad(model.batch_loss)(theta, x, y)
        adapted = model.adapt(theta, x, y, steps=1, alpha=0.4, first_order=False)
    first = "0.1.0.weight"  # the first convolution
    exact = (theta[first] - reference[first]) / 0.4
    assert (naive[first] - exact).norm() > 0.3 * exact.norm()
    for key, value in reference.items():
        assert value.dtype == adapted[key].dtype == torch.float32
        assert torch.allclose(adapted[key], value, rtol=1e-6, atol=1e-12), key
