"""The pretrain-and-evaluate family (Baseline, Baseline++, SimpleShot) and the labelled batches they pretrain on.

Checked against independent computations: the labelled batches against the class store and the split's alphabets;
the batched fit of Baseline's episode classifier against a plain loop of one ``nn.Linear`` and one SGD per task, and
on separable features; SimpleShot's CL2N and nearest centroid on a hand-worked example, and x̄ against the mean of the
training images themselves. Prediction on a user's own images: tests/test_predict.py.
"""

import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from test_cli import TINY, ok, state, train
from torch import nn

from lightning_meta import Baseline, BaselinePlusPlus, ConfigError, ProtoNet, SimpleShot, SyntheticDataModule
from lightning_meta.data import LabelledBatch, LabelledBatches, OmniglotDataModule
from lightning_meta.data.omniglot import GURMUKHI_TEST, TEST_ALPHABETS, VAL_ALPHABETS
from lightning_meta.episode import Episode


def labelled_data(**kwargs) -> SyntheticDataModule:
    data = SyntheticDataModule(classes=(5, 3, 3), items_per_class=6, n_way=3, k_shot=1, n_query=2,
                               train_batches="labelled", batch_size=7, **kwargs)
    data.setup("fit")
    return data


def test_a_pass_of_labelled_batches_draws_every_training_image_at_most_once():
    """30 training images in batches of 7: each pass is 4 batches of distinct images (2 left over), each image the
    store's image of its label, and the next pass is another order."""
    data = labelled_data()
    batches, store = data.samplers["train"], data.store("train")
    assert isinstance(batches, LabelledBatches) and batches.per_pass == 4
    seen = []
    for g in range(4):
        batch = batches[g]
        assert batch.images.shape == (7, 1, 28, 28) and batch.images.dtype == torch.uint8
        for image, label in zip(batch.images, batch.labels):
            matches = [i for i in range(6) if torch.equal(store.images[label, i], image)]
            assert len(matches) == 1
            seen.append((int(label), matches[0]))
    assert len(set(seen)) == 28 and {c for c, _ in seen} == set(range(5))
    assert not torch.equal(batches[4].images, batches[0].images)  # the second pass: another order
    again = labelled_data().samplers["train"]
    assert all(torch.equal(again[g].images, batches[g].images) for g in (0, 5, 9))  # a pure function of (seed, g)


def test_the_loader_takes_one_batch_a_step_from_where_training_stands():
    data = labelled_data(batches_per_epoch=3)
    loaded = list(data.train_dataloader())
    assert len(loaded) == 3 and all(isinstance(b, LabelledBatch) for b in loaded)
    assert all(torch.equal(b.images, data.samplers["train"][g].images) for g, b in enumerate(loaded))
    assert data.training_episodes() == {"train_batches": "labelled", "batch_size": 7, "seed": 0}


def test_pretraining_batches_never_hold_a_validation_or_test_class(data_root):
    """Omniglot's vinyals split: the labels of a pass of batches name characters of training alphabets only, and
    none of the four Gurmukhi characters that are tested."""
    data = OmniglotDataModule(root=str(data_root), split="vinyals", train_batches="labelled", batch_size=1024)
    data.setup("fit")
    names = data.store("train").names
    batches = data.samplers["train"]
    labels = torch.cat([batches[g].labels for g in range(batches.per_pass)])
    used = {names[c] for c in labels.unique().tolist()}
    assert len(used) == data.training_classes() == 4112
    assert not {name.split("/")[0] for name in used} & (set(VAL_ALPHABETS) | set(TEST_ALPHABETS))
    assert not any(name.rsplit("/", 1)[0] in GURMUKHI_TEST for name in used)


def episode_of(z_support: torch.Tensor, labels: torch.Tensor, n_way: int) -> Episode:
    T = z_support.shape[0]
    return Episode(z_support, labels, z_support[:, :1], labels[:, :1], n_way, keys=torch.arange(T) + 100)


@pytest.mark.parametrize("classifier", ["linear", "cosine"])
def test_the_batched_head_fit_equals_one_plain_sgd_run_per_task(classifier):
    """Three tasks of 10 support features (5-way 2-shot): the head fitted for all tasks at once equals, task by
    task, an nn.Linear (or an explicit cosine) trained by its own torch.optim.SGD on the same mini-batches."""
    torch.manual_seed(0)
    model = Baseline((8,), backbone="pixels", classifier=classifier, head_epochs=7, head_batch=4, num_classes=3)
    z = torch.randn(3, 10, 8)
    labels = torch.arange(5).repeat_interleave(2).expand(3, 10)
    episode = episode_of(z, labels, 5)
    weight, bias = model.fit_head(z, labels, episode)
    w0, b0, orders = model.head_init(episode, 8, 5)
    for t in range(3):
        head = nn.Linear(8, 5)
        head.load_state_dict({"weight": w0[t], "bias": b0[t]})
        sgd = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)
        for epoch in range(7):
            for chosen in orders[t, epoch].split(4):
                x = z[t, chosen]
                if classifier == "linear":
                    scores = head(x)
                else:  # s cos(x, w_n), s = 2 for 5 classes, each cosine as dot product over norms
                    dots = x @ head.weight.T
                    scores = 2 * dots / (x.norm(dim=1)[:, None] * head.weight.norm(dim=1)[None])
                loss = F.cross_entropy(scores, labels[t, chosen])
                sgd.zero_grad()
                loss.backward()
                sgd.step()
        torch.testing.assert_close(weight[t], head.weight.detach(), atol=1e-5, rtol=1e-5)
        if classifier == "linear":
            torch.testing.assert_close(bias[t], head.bias.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [Baseline, BaselinePlusPlus])
def test_the_fitted_head_separates_separable_features(cls):
    """Support and queries near one of five orthogonal directions each: the episode's classifier gets every query
    right, as the nearest direction does."""
    torch.manual_seed(0)
    model = cls((16,), backbone="pixels", num_classes=3).eval()
    directions = torch.eye(16)[:5] * 3
    support = directions.repeat_interleave(2, 0) + 0.3 * torch.randn(10, 16)
    query = directions.repeat_interleave(4, 0) + 0.3 * torch.randn(20, 16)
    labels = torch.arange(5)
    episode = Episode(support[None], labels.repeat_interleave(2)[None], query[None], labels.repeat_interleave(4)[None],
                      5, keys=torch.tensor([7]))
    with torch.no_grad():
        assert bool((model.predict(episode).argmax(-1) == episode.query_labels).all())


def test_cl2n_and_the_nearest_centroid_by_hand():
    """x̄ = (1, 1). Support: class 0 at (4, 1), class 1 at (1, 3); query (3, 2). CL2N: (3, 0) -> (1, 0), (0, 2) ->
    (0, 1), query (2, 1) -> (2, 1)/√5; distances √((2/√5 - 1)² + 1/5) and √(4/5 + (1/√5 - 1)²). UN: the raw
    distances √2 and √5. L2N: (4, 1)/√17, (1, 3)/√10, (3, 2)/√13."""
    model = SimpleShot((2,), backbone="pixels", num_classes=3).eval()
    model.train_mean.copy_(torch.tensor([1.0, 1.0]))
    episode = Episode(torch.tensor([[[4.0, 1.0], [1.0, 3.0]]]), torch.tensor([[0, 1]]),
                      torch.tensor([[[3.0, 2.0]]]), torch.tensor([[0]]), 2)
    r5 = math.sqrt(5)
    expected = {
        "CL2N": [math.sqrt((2 / r5 - 1) ** 2 + 1 / 5), math.sqrt(4 / 5 + (1 / r5 - 1) ** 2)],
        "UN": [math.sqrt(2), math.sqrt(5)],
        "L2N": [math.dist((3 / math.sqrt(13), 2 / math.sqrt(13)), (4 / math.sqrt(17), 1 / math.sqrt(17))),
                math.dist((3 / math.sqrt(13), 2 / math.sqrt(13)), (1 / math.sqrt(10), 3 / math.sqrt(10)))],
    }
    for features, distances in expected.items():
        model.hparams.features = features
        with torch.no_grad():
            torch.testing.assert_close(model.predict(episode)[0, 0], -torch.tensor(distances))


def test_the_mean_training_feature_is_the_mean_over_every_training_image():
    """With the identity as f_θ (``pixels``), x̄ is the mean training image, computed here from the store."""
    data = labelled_data()
    model = SimpleShot((1, 28, 28), backbone="pixels", num_classes=5).eval()
    model.trainer = SimpleNamespace(datamodule=data)
    model.update_train_mean()
    images = data.store("train").images.flatten(0, 1).float() / 255  # every slot is real: 6 items a class
    torch.testing.assert_close(model.train_mean, images.flatten(1).mean(0), atol=1e-6, rtol=0)


def test_the_data_and_the_model_must_agree_on_how_to_train():
    episodic, labelled = SyntheticDataModule(), labelled_data()
    with pytest.raises(ConfigError, match="Baseline pretrains on batches of labelled images .* set "
                                          "data.train_batches: labelled"):
        Baseline((1, 28, 28)).validate_setup(episodic, False, 10)
    with pytest.raises(ConfigError, match="ProtoNet trains on episodes, .* set data.train_batches: episodes"):
        ProtoNet((1, 28, 28)).validate_setup(labelled, True, 10)
    with pytest.raises(ConfigError, match="model.num_classes is 7 but the training split has 5 classes"):
        SimpleShot((1, 28, 28), num_classes=7).bind_data(labelled, training=True)
    model = SimpleShot((1, 28, 28))
    model.bind_data(labelled, training=True)
    assert model.hparams.num_classes == 5 and model.classifier.out_features == 5


LABELLED = ["--config", "proto_synthetic.yaml", "--data.train_batches", "labelled", "--data.batch_size", 16,
            "--data.batches_per_epoch", 5, "--data.val_episodes", 10, "--data.test_episodes", 10,
            "--checkpoint_every", 100, *TINY]


@pytest.mark.parametrize("algorithm", ["Baseline", "BaselinePlusPlus"])
def test_train_py_pretrains_then_validates_and_tests_on_episodes(algorithm, tmp_path):
    common = [*LABELLED, "--model", f"lightning_meta.algorithms.{algorithm}", "--trainer.inference_mode", "false"]
    out = ok(train(*common, "--trainer.max_steps", 6, log_root=tmp_path))
    assert re.search(r"^test/acc \d+\.\d\d ± \d+\.\d\d  \(synthetic, 5-way 1-shot, 10 episodes\)$", out, re.M)
    saved = state(tmp_path / "proto_synthetic" / "version_0" / "checkpoints" / "last.ckpt")
    assert saved["hyper_parameters"]["num_classes"] == 64 and saved["global_step"] == 6


def test_train_py_resumes_pretraining_exactly(tmp_path):
    """SimpleShot, 12 steps in one run equal 7, then a resumed run to 12 (mid-epoch), x̄ included."""
    common = [*LABELLED, "--model", "lightning_meta.algorithms.SimpleShot"]
    ok(train(*common, "--trainer.max_steps", 12, log_root=tmp_path / "a"))
    ok(train(*common, "--trainer.max_steps", 7, "--test_after_fit", "false", log_root=tmp_path / "b"))
    ok(train(*common, "--trainer.max_steps", 12, "--ckpt_path", "last", log_root=tmp_path / "b"))
    a, b = (state(tmp_path / run / "proto_synthetic" / "version_0" / "checkpoints" / "last.ckpt") for run in "ab")
    assert a["global_step"] == b["global_step"] == 12 and a["state_dict"].keys() == b["state_dict"].keys()
    assert bool(a["state_dict"]["train_mean"].abs().sum() > 0)  # x̄ of the validation at step 10
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
