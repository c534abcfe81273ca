"""Any backbone by name (``torchvision:<name>``, ``timm:<name>``), its published or saved weights, a frozen backbone,
and the feature cache of evaluation. No download: the published-weights path is tested with weights the test saves
where the library's cache would keep them."""

import re
from types import SimpleNamespace

import pytest
import torch
from test_cli import TINY, ok, train

from lightning_meta import ConfigError, MatchingNetwork, ProtoNet, SyntheticDataModule
from lightning_meta.algorithms import ALGORITHMS
from lightning_meta.algorithms.metric import FeatureCache
from lightning_meta.episode import Episode

timm = pytest.importorskip("timm")


def episode(T=2, N=3, K=1, Q=2, channels=1, size=28, seed=0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    return Episode(torch.rand(T, N * K, channels, size, size, generator=g),
                   torch.arange(N).repeat_interleave(K).expand(T, -1),
                   torch.rand(T, N * Q, channels, size, size, generator=g),
                   torch.arange(N).repeat_interleave(Q).expand(T, -1), N)


@pytest.mark.parametrize("backbone", ["torchvision:resnet18", "timm:test_resnet"])
def test_a_library_network_embeds_an_episode_and_survives_save_and_load(backbone):
    """The network without its classifier: grey images enter as three equal channels, so the embedding of a grey
    image is the library network's pooled features of the RGB image with that grey level in every channel."""
    torch.manual_seed(0)
    model = ProtoNet((1, 28, 28), backbone=backbone).eval()
    e = episode()
    with torch.no_grad():
        z_support, z_query = model.embed(e)
        rgb = model.f_theta.net(e.support[0].repeat(1, 3, 1, 1))
    assert z_support.shape == (2, 3, model.z_shape[0]) and z_query.shape == (2, 6, model.z_shape[0])
    torch.testing.assert_close(z_support[0], rgb)
    again = ALGORITHMS["protonet"](**model.hparams)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again.eval().predict(e), model.predict(e))


def test_pretrained_true_loads_torchvisions_published_weights_from_its_cache(tmp_path, monkeypatch):
    """The file torchvision would download, put in its cache by the test: ``pretrained: true`` loads it."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    published = torchvision.models.resnet18().state_dict()
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(published, tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    model = ProtoNet((3, 32, 32), backbone="torchvision:resnet18", pretrained=True)
    loaded = model.f_theta.net.state_dict()
    assert set(published) - set(loaded) == {"fc.weight", "fc.bias"}  # the classifier is gone
    assert all(torch.equal(loaded[k], published[k]) for k in loaded)


@pytest.mark.parametrize("library, name", [("torchvision", "resnet18"), ("timm", "test_resnet")])
def test_pretrained_from_a_saved_file(library, name, tmp_path):
    torch.manual_seed(2)
    source = (timm.create_model(name) if library == "timm" else __import__("torchvision").models.get_model(name))
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    model = ProtoNet((3, 32, 32), backbone=f"{library}:{name}", pretrained=str(tmp_path / "weights.pt"))
    saved, loaded = source.state_dict(), model.f_theta.net.state_dict()
    body = [k for k in loaded if k in saved and loaded[k].dtype.is_floating_point]
    assert len(body) > 10 and all(torch.equal(loaded[k], saved[k]) for k in body)
    with pytest.raises(ConfigError, match=rf"does not hold {library}:{name}'s weights"):
        torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
        ProtoNet((3, 32, 32), backbone=f"{library}:{name}", pretrained=str(tmp_path / "wrong.pt"))


@pytest.mark.parametrize("settings, message", [
    ({"backbone": "torchvision:vit_b_16"}, r"torchvision:vit_b_16 cannot embed 28x28 images \(.*\); raise data.image_size"),
    ({"backbone": "torchvision:resnet"}, "torchvision has no classification network 'resnet'"),
    ({"backbone": "timm:resnet"}, "timm has no network 'resnet'"),
    ({"backbone": "conv4", "pretrained": True}, "conv4 has none"),
    ({"backbone": "conv4", "cache_features": True, "batch_norm": "transductive"}, "depend on the episode"),
])  # fmt: skip
def test_a_backbone_that_cannot_take_the_data_is_one_line(settings, message):
    with pytest.raises(ConfigError, match=message) as error:
        ProtoNet((1, 28, 28), **settings)
    assert "\n" not in str(error.value)


def test_the_feature_cache_embeds_each_distinct_image_once_and_changes_nothing():
    """Three episodes drawing from six images: f_θ sees each image once, and the scores equal f_θ on every
    episode's images."""
    torch.manual_seed(3)
    model = ProtoNet((1, 28, 28)).eval()
    pool = torch.rand(6, 1, 28, 28)
    picks = [torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([[5, 0, 1], [2, 0, 3]]),
             torch.tensor([[1, 2, 3], [4, 4, 0]])]
    episodes = [Episode(pool[p[0]][None], torch.arange(3)[None], pool[p[1]][None], torch.arange(3)[None], 3)
                for p in picks]
    seen = []
    model.f_theta.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    with torch.no_grad():
        plain = [model.predict(e) for e in episodes]
        assert seen == [6, 6, 6]
        seen.clear()
        model.hparams.cache_features = True
        model.trainer = SimpleNamespace(datamodule=None)  # no store to fill ahead: embedded as the episodes come
        model.on_test_epoch_start()
        assert isinstance(model.feature_cache, FeatureCache)
        cached = [model.predict(e) for e in episodes]
    assert sum(seen) == 6  # each of the six images once
    for a, b in zip(cached, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_feature_cache_filled_ahead_serves_every_test_episode_without_running_f_theta():
    """20 test episodes of 3 x (1 + 2) images draw 180 times from 18 test images: the cache embeds the 18 at the start
    of the test, in one batch, and the episodes' scores equal f_θ run on every episode."""
    data = SyntheticDataModule(classes=(5, 3, 3), items_per_class=6, n_way=3, k_shot=1, n_query=2, test_episodes=20)
    data.setup("test")
    torch.manual_seed(7)
    model = ProtoNet((1, 28, 28), cache_features=True).eval()
    model.trainer = SimpleNamespace(datamodule=data)
    episodes = [data.on_after_batch_transfer(batch, 0) for batch in data.test_dataloader()]
    with torch.no_grad():
        plain = [model.predict(e) for e in episodes]
        seen = []
        model.f_theta.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
        model.on_test_epoch_start()
        assert seen == [18]
        cached = [model.predict(e) for e in episodes]
    assert seen == [18]
    for a, b in zip(cached, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_frozen_backbone_keeps_its_weights_and_statistics_while_the_rest_trains():
    """Matching Networks with FCE and a frozen f_θ: a training step moves the FCE LSTMs, not f_θ, and batch norm
    keeps its running statistics."""
    torch.manual_seed(4)
    model = MatchingNetwork((1, 28, 28), fce=True, freeze_backbone=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = model.configure_optimizers()
    loss, _ = model.meta_loss(episode(K=2))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("f_theta."))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("fce."))
    assert not model.f_theta.training and model.fce.training


def test_train_py_tests_timms_published_weights_without_a_checkpoint(tmp_path, monkeypatch):
    """``--model.pretrained true`` and ``--test_only`` with no checkpoint: timm reads the published weights from its
    hub cache (where the test put a file of its own; offline, so nothing is downloaded) and the network is tested
    as loaded, through the feature cache; training a model with nothing left to train is one line."""
    from safetensors.torch import save_file

    torch.manual_seed(5)
    published = timm.create_model("test_resnet").state_dict()
    snapshot = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(published, snapshot / "model.safetensors")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    common = ["--config", "proto_synthetic.yaml", "--model.backbone", "timm:test_resnet", "--model.pretrained", "true",
              "--model.freeze_backbone", "true", "--data.val_episodes", 10, "--data.test_episodes", 10, *TINY]
    out = ok(train(*common, "--test_only", "true", "--model.cache_features", "true", log_root=tmp_path))
    assert re.search(r"^test/acc \d+\.\d\d ± \d+\.\d\d", out, re.M)
    refused = train(*common, "--trainer.max_steps", 2, log_root=tmp_path / "runs")
    assert refused.returncode == 1 and "ProtoNet has nothing to train: every weight is frozen" in refused.stderr
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))  # no published weights to be had: not silently random
    missing = train(*common, "--test_only", "true", log_root=tmp_path)
    assert missing.returncode == 1 and "cannot load timm:test_resnet's published weights" in missing.stderr


def test_a_checkpoint_of_a_pretrained_backbone_loads_without_its_weights_file(tmp_path):
    """The checkpoint holds the weights: loading it for prediction neither reads the file again nor downloads."""
    from test_predict import untrained

    from lightning_meta.predict import load_model

    torch.manual_seed(6)
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "weights.pt")
    model = ProtoNet((1, 28, 28), backbone="timm:test_resnet", pretrained=str(tmp_path / "weights.pt")).eval()
    ckpt = untrained(model, tmp_path / "model.ckpt")
    (tmp_path / "weights.pt").unlink()
    loaded, _ = load_model(ckpt)
    e = episode()
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(e), model.predict(e))
