"""Every algorithm's training and prediction step runs with the model and the episode on a device other than the
default one: the ``meta`` device, which has shapes and dtypes but no data. A tensor made without ``device=`` (a
``torch.zeros(...)`` on the CPU) or a value read back from the device (``.item()``, ``int(tensor)``) fails here, in
CI, and not on a user's GPU."""

import sys
from pathlib import Path

import pytest
import torch
from test_configs import BuildOnly, Built

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lightning_meta import EpisodicDataModule, MetaLearner  # noqa: E402
from lightning_meta.data import LabelledBatch  # noqa: E402
from lightning_meta.episode import Episode  # noqa: E402

META = torch.device("meta")
CONFIGS = ["proto.yaml", "matching.yaml", "matching_fce.yaml", "relation.yaml", "siamese.yaml", "maml.yaml",
           "fomaml.yaml", "reptile.yaml", "mann.yaml", "metanet.yaml", "meta_lstm.yaml"]
PRETRAINED = ["baseline.yaml", "baseline_pp.yaml", "simpleshot.yaml"]  # they pretrain on labelled batches
SETTINGS = {
    "mann.yaml": ["--model.compile_step", "false"],  # torch.compile's CPU compiler cannot lower meta tensors
    **{config: ["--model.num_classes", "10"] for config in PRETRAINED},  # else sized from the data's classes
}


class Capture(BuildOnly):
    def instantiate_trainer(self, **kwargs):
        raise Built(self.model, self.datamodule)


def built(config: str) -> tuple[MetaLearner, EpisodicDataModule]:
    with pytest.raises(Built) as caught:
        Capture(MetaLearner, EpisodicDataModule, subclass_mode_model=True, subclass_mode_data=True,
                args=["--config", str(ROOT / "configs" / config), *SETTINGS.get(config, [])], run=False,
                parser_kwargs={"exit_on_error": False})
    return caught.value.args


def uint8_episode(data: EpisodicDataModule, tasks: int = 2) -> Episode:
    """A training-shaped task batch of uint8 images, as the data loader gives it, on the CPU."""
    n, k, q = data.shapes["train"]
    image = data.image_shape
    labels = lambda m: torch.arange(n).repeat_interleave(m).expand(tasks, n * m)  # noqa: E731
    return Episode(torch.randint(0, 256, (tasks, n * k, *image), dtype=torch.uint8), labels(k),
                   torch.randint(0, 256, (tasks, n * q, *image), dtype=torch.uint8), labels(q), n,
                   keys=torch.arange(tasks))


@pytest.mark.parametrize("config", CONFIGS)
def test_a_training_and_a_prediction_step_stay_on_the_models_device(config, monkeypatch):
    if config == "metanet.yaml":  # its fast path picks coordinates by value (data-dependent shapes): the plain one
        monkeypatch.setenv("LIGHTNING_META_SPEEDUPS", "0")
    model, data = built(config)
    episode = data.on_after_batch_transfer(data.transfer_batch_to_device(uint8_episode(data), META, 0), 0)
    assert episode.support.device == META and episode.support.is_floating_point()
    assert episode.keys.device.type == "cpu"  # task keys stay on the CPU, where Episode.generator reads them
    model = model.to(META)
    loss, outputs = model.meta_loss(episode)
    assert loss.device == META and outputs.device == META
    if loss.requires_grad:
        loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(g.device == META for g in grads)
    with torch.no_grad():
        assert model.evaluate(episode).device == META


@pytest.mark.parametrize("config", PRETRAINED)
def test_a_pretraining_and_a_prediction_step_stay_on_the_models_device(config):
    model, data = built(config)
    images = torch.randint(0, 256, (4, *data.image_shape), dtype=torch.uint8)
    batch = data.on_after_batch_transfer(data.transfer_batch_to_device(LabelledBatch(images, torch.arange(4)), META,
                                                                       0), 0)
    assert batch.images.device == META and batch.images.is_floating_point()
    model = model.to(META)
    loss, outputs = model.meta_loss(batch)
    assert loss.device == META and outputs.device == META
    loss.backward()
    assert all(p.grad.device == META for p in model.parameters() if p.grad is not None)
    episode = data.on_after_batch_transfer(data.transfer_batch_to_device(uint8_episode(data), META, 0), 0)
    with torch.no_grad():
        assert model.eval().evaluate(episode).device == META
