import math

import pytest
import pytorch_lightning as pl
import torch
from test_maml import classification_episode, conv_maml
from torch import nn
from torch.func import functional_call

from lightning_meta import ANIL, ConfigError, Episode, SyntheticDataModule


def maml_with_frozen_body(model: ANIL, episode: Episode, steps: int, alpha: float
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MAML's query outputs [T, NQ, N] and meta-gradient with the body's inner learning rate 0 and the head's
    ``alpha``, computed with torch.autograd.grad (create_graph) on the whole network, one task after another."""
    theta = dict(model.net.named_parameters())
    rates = {k: alpha if k.startswith("1.") else 0.0 for k in theta}
    total, every = 0.0, []
    for support, labels, query, query_labels in zip(episode.support, episode.support_labels, episode.query,
                                                    episode.query_labels):
        params = dict(theta)
        for _ in range(steps):
            loss = nn.functional.cross_entropy(functional_call(model.net, params, (support,)), labels)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {k: p - rates[k] * g for (k, p), g in zip(params.items(), grads)}
        if model.hparams.batch_norm == "transductive":
            outputs = functional_call(model.net, params, (query,))
        else:
            with model.statistics_from(support.shape[0]):
                outputs = functional_call(model.net, params, (torch.cat([support, query]),))[support.shape[0]:]
        total = total + nn.functional.cross_entropy(outputs, query_labels) / episode.support.shape[0]
        every.append(outputs.detach())
    return torch.stack(every), dict(zip(theta, torch.autograd.grad(total, list(theta.values()))))


@pytest.mark.parametrize("batch_norm", ["transductive", "support"])
@pytest.mark.parametrize("meta_batch", ["loop", "vmap"])
def test_meta_gradient_is_maml_with_the_body_inner_learning_rate_zero(meta_batch, batch_norm):
    """Body and head: ANIL's meta-gradient (features once, inner loop on the head's features, torch.func) against
    MAML's through the whole network with a zero step size for every body parameter."""
    model = conv_maml(meta_batch, learner=ANIL, batch_norm=batch_norm)
    episode = classification_episode(T=2, N=3, K=2, Q=2, shape=(1, 16, 16))
    model.zero_grad()
    loss, outputs = model.meta_loss(episode)
    loss.backward()
    expected_outputs, expected = maml_with_frozen_body(model, episode, steps=2, alpha=0.3)
    assert torch.allclose(outputs, expected_outputs, rtol=1e-10)
    assert any(k.startswith("0.") and expected[k].abs().sum() > 0 for k in expected)  # the body has a gradient
    for k, p in model.net.named_parameters():
        assert torch.allclose(p.grad, expected[k], rtol=1e-9, atol=1e-12), k


def test_nil_testing_scores_a_hand_worked_episode():
    """Body = identity on 2-d inputs. Support (1, 0) of class 0, (0, 1) and (1, 1) of class 1; the query (1, 0) has
    cosines 1, 0, 1/√2, so p(0) = e / (e + 1 + e^(1/√2))."""
    model = ANIL((2,), n_way=2, backbone="mlp", hidden=4, nil_testing=True).double()
    model.net[0] = nn.Identity()
    model.net[1] = nn.Linear(2, 2).double()
    model.norms = []
    model.head_names = ["1.weight", "1.bias"]
    episode = Episode(support=torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=torch.float64),
                      support_labels=torch.tensor([[0, 1, 1]]), query=torch.tensor([[[1.0, 0.0]]], dtype=torch.float64),
                      query_labels=torch.tensor([[0]]), n_way=2)
    p0 = math.e / (math.e + 1 + math.exp(1 / math.sqrt(2)))
    probabilities = model.predict(episode).exp()[0, 0]
    assert torch.allclose(probabilities, torch.tensor([p0, 1 - p0], dtype=torch.float64), rtol=1e-12)


def test_refuses_nil_testing_on_regression():
    with pytest.raises(ConfigError, match="nil_testing .* classification"):
        ANIL((1,), n_way=0, backbone="mlp", nil_testing=True)


@pytest.mark.parametrize("setting", ["learn_inner_lr", "per_step_batch_norm", "per_step_batch_norm_statistics"])
def test_refuses_the_settings_of_the_whole_network_inner_loop(setting):
    with pytest.raises(ConfigError, match="ANIL adapts its head alone"):
        ANIL((1, 28, 28), n_way=5, backbone="conv4", hidden=4, inner_steps=2, **{setting: True})


@pytest.mark.parametrize("nil_testing", [False, True])
def test_learns_synthetic_episodes(nil_testing, trainer):
    pl.seed_everything(0)
    data = SyntheticDataModule(n_way=5, k_shot=1, n_query=2, tasks_per_batch=4, noise=0.8, test_episodes=100)
    model = ANIL(data.image_shape, n_way=5, hidden=32, inner_steps=5, nil_testing=nil_testing)
    before = trainer(1).test(model, data, verbose=False)[0]["test/acc"]
    trainer(100).fit(model, data)
    after = trainer(1).test(model, data, verbose=False)[0]["test/acc"]
    assert before < 40 and after > 60, (before, after)  # chance is 20%
