"""Siamese network, Matching Networks (with and without FCE) and Relation Network: scores on hand-worked
examples, an independent implementation of the FCE equations, the verification pairs, learning."""

import math
from copy import deepcopy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_meta import Episode, MatchingNetwork, ProtoNet, RelationNetwork, Siamese, SyntheticDataModule
from lightning_meta.algorithms.relation import RelationModule
from lightning_meta.algorithms.siamese import verification_pairs
from lightning_meta.backbones import batch_statistics
from lightning_meta.errors import ConfigError


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# Siamese

def test_siamese_p_same_and_the_argmax_rule_by_hand():
    """Identity embedding, α = (-1, -2), b = 3: p(x₁, x₂) = σ(3 - |Δ₁| - 2|Δ₂|). 2-way 2-shot, one query (0.5, 0).
    Class 0 at (0, 0) and (0, 1): p = σ(2.5), σ(0.5); class 1 at (1, 1) and (2, 0): p = σ(0.5), σ(1.5)."""
    model = Siamese(image_shape=(2,), backbone="mlp")
    model.f_theta = nn.Identity()
    model.alpha = nn.Linear(2, 1)
    with torch.no_grad():
        model.alpha.weight.copy_(torch.tensor([[-1.0, -2.0]]))
        model.alpha.bias.fill_(3.0)
    episode = Episode(support=torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [2.0, 0.0]]]),
                      support_labels=torch.tensor([[0, 1, 0, 1]]), query=torch.tensor([[[0.5, 0.0]]]),
                      query_labels=torch.tensor([[1]]), n_way=2)
    scores = model.predict(episode)  # log of the mean p per class
    expected = [(sigmoid(2.5) + sigmoid(0.5)) / 2, (sigmoid(0.5) + sigmoid(1.5)) / 2]
    assert scores.shape == (1, 1, 2)
    assert torch.allclose(scores[0, 0].exp(), torch.tensor(expected))
    assert model.score(scores, episode).item() == 0.0  # class 0 has the higher mean p, the true class is 1


def test_siamese_argmax_resolves_probabilities_that_round_to_one():
    """p = σ(40) and σ(30) are both 1.0 in float32; the query is nearer to class 1 (logit 40)."""
    model = Siamese(image_shape=(1,), backbone="mlp")
    model.f_theta = nn.Identity()
    model.alpha = nn.Linear(1, 1)
    with torch.no_grad():
        model.alpha.weight.fill_(-10.0)
        model.alpha.bias.fill_(50.0)
    episode = Episode(torch.tensor([[[2.0], [1.0]]]), torch.tensor([[0, 1]]), torch.tensor([[[0.0]]]),
                      torch.tensor([[1]]), 2)
    assert model.score(model.predict(episode), episode).item() == 100.0


def generators(episode: Episode) -> list[torch.Generator]:
    """The generators of the verification pairs of each task, as Siamese.meta_loss takes them."""
    return [episode.generator(t, "pairs") for t in range(episode.support.shape[0])]


def test_verification_pairs_are_balanced_distinct_and_correctly_labelled():
    torch.manual_seed(0)
    labels = torch.stack([torch.arange(4).repeat_interleave(3)[torch.randperm(12)] for _ in range(3)])  # [3, 12]
    first, second, same = verification_pairs(labels, [torch.Generator().manual_seed(t) for t in range(3)], 4)
    # 4 classes of 3: 4 * 3 = 12 same-class pairs, 6 * 9 = 54 different-class ones; P = 12
    assert first.shape == second.shape == same.shape == (3, 24)
    assert (same.sum(1) == 12).all()
    for t in range(3):
        assert (same[t] == (labels[t, first[t]] == labels[t, second[t]])).all()
        pairs = {(int(a), int(b)) for a, b in zip(first[t], second[t])}
        assert len(pairs) == 24 and all(a < b for a, b in pairs)


def test_verification_pairs_are_drawn_uniformly():
    """2 classes of 3: all 6 same-class pairs, and 6 of the 9 different-class ones, each with probability 2/3: over
    the tasks of 900 keys each is drawn 600 times, give or take 14 (binomial)."""
    labels = torch.tensor([[0, 0, 0, 1, 1, 1]])
    counts = torch.zeros(6, 6)
    for key in range(900):
        first, second, same = verification_pairs(labels, [torch.Generator().manual_seed(key)], 2)
        assert same.sum() == 6
        counts[first[0], second[0]] += 1
    different = counts[:3, 3:]
    assert counts[:3, :3].triu(1).sum() == counts[3:, 3:].triu(1).sum() == 3 * 900  # every same-class pair, always
    assert ((different - 600).abs() < 5 * 14.2).all(), different


def test_siamese_pairs_depend_on_the_task_key_alone():
    """A task's verification pairs come from its own generator (Episode.generator), never from the global RNG: the
    same whatever the global RNG's state (so on any rank and after a resume), the same for two tasks of one key,
    other pairs for another key. (With torch.rand, reseeding the global RNG changed them.)"""
    labels = torch.arange(5).repeat(2)  # 5 classes of 2: all 5 same-class pairs, 5 of the 40 different-class ones
    episode = Episode(torch.randn(3, 5, 3), labels[:5].expand(3, 5), torch.randn(3, 5, 3), labels[5:].expand(3, 5),
                      5, keys=torch.tensor([7, 8, 7]))
    drawn = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        drawn.append(verification_pairs(labels.expand(3, 10), generators(episode), 5))
    assert all(torch.equal(a, b) for a, b in zip(*drawn))
    first, second, _ = drawn[0]
    pairs = [set(zip(first[t].tolist(), second[t].tolist())) for t in range(3)]
    assert pairs[0] == pairs[2] and pairs[0] != pairs[1]

    model = Siamese(image_shape=(3,), backbone="mlp")
    losses = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        losses.append(model.meta_loss(episode)[0])
    assert torch.equal(losses[0], losses[1])


def test_siamese_training_loss_is_the_balanced_binary_cross_entropy():
    """The loss equals BCE of p over the chosen pairs, computed here from the pairs with the model's own p."""
    torch.manual_seed(0)
    model = Siamese(image_shape=(3,), backbone="mlp")
    model.f_theta = nn.Identity()
    model.alpha = nn.Linear(3, 1)
    episode = Episode(torch.randn(1, 4, 3), torch.tensor([[0, 0, 1, 1]]), torch.randn(1, 2, 3),
                      torch.tensor([[1, 0]]), 2)
    loss, _ = model.meta_loss(episode)
    first, second, same = verification_pairs(torch.tensor([[0, 0, 1, 1, 1, 0]]), generators(episode), 2)
    x = torch.cat([episode.support, episode.query], 1)[0]
    expected = 0.0
    for a, b, s in zip(first[0], second[0], same[0]):
        p = torch.sigmoid(model.alpha((x[a] - x[b]).abs())).item()
        expected -= math.log(p) if s else math.log(1 - p)
    assert same.sum() == 6 and math.isclose(loss.item(), expected / 12, rel_tol=1e-5)  # 2 classes of 3: P = 6


# Matching Networks

@pytest.mark.parametrize("s", [1.0, 3.0])
def test_matching_attention_and_prediction_by_hand(s):
    """Identity embedding. Query (1, 0); support (1, 0) and (-1, 0) of class 0, (0, 1) and (1, 1) of class 1:
    cosines 1, -1, 0, 1/√2; with E_i = exp(s · cos_i), ŷ_0 = (E_0 + E_2) / Σ, ŷ_1 = (E_1 + E_3) / Σ, Σ = Σ_i E_i."""
    model = MatchingNetwork(image_shape=(2,), backbone="mlp", scale=s)
    model.f_theta = nn.Identity()
    episode = Episode(support=torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]]]),
                      support_labels=torch.tensor([[0, 1, 0, 1]]), query=torch.tensor([[[1.0, 0.0]]]),
                      query_labels=torch.tensor([[1]]), n_way=2)
    E = [math.exp(s * c) for c in (1, 0, -1, 1 / math.sqrt(2))]
    y_hat = [(E[0] + E[2]) / sum(E), (E[1] + E[3]) / sum(E)]
    loss, log_y_hat = model.meta_loss(episode)
    assert torch.allclose(log_y_hat.exp()[0, 0], torch.tensor(y_hat))
    assert math.isclose(loss.item(), -math.log(y_hat[1]), rel_tol=1e-5)


@pytest.mark.parametrize("learn_scale", [False, True])
def test_matching_scale_is_learned_only_when_asked(learn_scale):
    """The loss −log ŷ_1 of the example above as a function of s has the derivative
    −(Σ_{i∈1} c_i E_i) / (Σ_{i∈1} E_i) + (Σ_i c_i E_i) / Σ_i E_i; the learned s receives it, a fixed s nothing."""
    model = MatchingNetwork(image_shape=(2,), backbone="mlp", scale=2.0, learn_scale=learn_scale)
    model.f_theta = nn.Identity()
    episode = Episode(support=torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]]]),
                      support_labels=torch.tensor([[0, 1, 0, 1]]),
                      query=torch.tensor([[[1.0, 0.0]]], requires_grad=True),  # so that the loss has a graph
                      query_labels=torch.tensor([[1]]), n_way=2)
    model.meta_loss(episode)[0].backward()
    c = [1, 0, -1, 1 / math.sqrt(2)]
    E = [math.exp(2.0 * ci) for ci in c]
    expected = -(c[1] * E[1] + c[3] * E[3]) / (E[1] + E[3]) + sum(ci * Ei for ci, Ei in zip(c, E)) / sum(E)
    if learn_scale:
        assert math.isclose(model.scale.grad.item(), expected, rel_tol=1e-5)
    else:
        assert model.scale.grad is None


def test_matching_refuses_a_nonpositive_scale():
    with pytest.raises(ConfigError, match="model.scale"):
        MatchingNetwork(image_shape=(2,), backbone="mlp", scale=0.0)


def lstm_step(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh):
    """One step of the standard LSTM, written out: gates i, f, g, o."""
    gates = x @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def fce_by_the_equations(fce, g_prime, f_prime, steps):
    """g(x_i, S) and f(x̂, S) of Vinyals et al., appendix, for one task: g_prime [NK, D], f_prime [NQ, D]."""
    lstm, D = fce.g_lstm, g_prime.shape[1]
    forward, backward = [], []
    h = c = torch.zeros(D, dtype=g_prime.dtype)
    for x in g_prime:
        h, c = lstm_step(x, h, c, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
        forward.append(h)
    h = c = torch.zeros(D, dtype=g_prime.dtype)
    for x in g_prime.flip(0):
        h, c = lstm_step(x, h, c, lstm.weight_ih_l0_reverse, lstm.weight_hh_l0_reverse, lstm.bias_ih_l0_reverse,
                         lstm.bias_hh_l0_reverse)
        backward.insert(0, h)
    g = torch.stack(forward) + torch.stack(backward) + g_prime
    cell, f = fce.f_lstm, []
    for x in f_prime:
        h = c = torch.zeros(D, dtype=g_prime.dtype)
        for _ in range(steps):
            r = torch.softmax(g @ h, 0) @ g  # r_{k-1} = Σ_i a(h_{k-1}, g(x_i)) g(x_i)
            # LSTM(f'(x̂), [h_{k-1}, r_{k-1}], c_{k-1}): the hidden input [h, r] feeds the gates through
            # weight_hh (for h) and the columns of weight_ih after the first D (for r)
            w_x, w_r = cell.weight_ih[:, :D], cell.weight_ih[:, D:]
            h_hat, c = lstm_step(x, torch.cat([h, r]), c, w_x, torch.cat([cell.weight_hh, w_r], 1), cell.bias_ih,
                                 cell.bias_hh)
            h = h_hat + x
        f.append(h)
    return g, torch.stack(f)


@pytest.mark.parametrize("steps", [1, 3])
def test_fce_follows_the_papers_equations(steps):
    torch.manual_seed(0)
    model = MatchingNetwork(image_shape=(4,), backbone="mlp", hidden=4, fce=True, processing_steps=steps).double()
    g_prime, f_prime = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64)
    g = model.fce.g(g_prime)
    f = model.fce.f(f_prime, g)
    for t in range(2):
        g_t, f_t = fce_by_the_equations(model.fce, g_prime[t], f_prime[t], steps)
        assert torch.allclose(g[t], g_t) and torch.allclose(f[t], f_t)


def test_fce_changes_the_embeddings_and_its_parameters_learn():
    torch.manual_seed(0)
    model = MatchingNetwork(image_shape=(6,), backbone="mlp", hidden=8, fce=True)
    episode = Episode(torch.randn(1, 6, 6), torch.tensor([[0, 0, 1, 1, 2, 2]]), torch.randn(1, 3, 6),
                      torch.tensor([[0, 1, 2]]), 3)
    loss, with_fce = model.meta_loss(episode)
    loss.backward()
    fce = model.fce
    model.fce = None
    assert not torch.allclose(with_fce, model.predict(episode))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fce.parameters())


# Relation Network

class Difference(nn.Module):
    """A stand-in relation module on 1x1 maps: class feature - query feature + 0.5, [T, NQ, N]."""

    def forward(self, z_class, z_query):
        return z_class.flatten(2)[:, None, :, 0] - z_query.flatten(2)[:, :, None, 0] + 0.5


def test_relation_scores_targets_and_loss_by_hand():
    """1x1 feature maps. Class 0 sums 0.1 + 0.2 = 0.3, class 1 sums 0.4 + 0.5 = 0.9. Queries 0.3 (class 0) and
    0.8 (class 1) score (0.5, 1.1) and (0.0, 0.6); targets (1, 0) and (0, 1): loss (0.25 + 1.21 + 0 + 0.16) / 4."""
    model = RelationNetwork(image_shape=(1, 28, 28))
    model.f_theta, model.g_phi = nn.Identity(), Difference()
    episode = Episode(support=torch.tensor([0.1, 0.4, 0.2, 0.5]).view(1, 4, 1, 1, 1),
                      support_labels=torch.tensor([[0, 1, 0, 1]]), query=torch.tensor([0.3, 0.8]).view(1, 2, 1, 1, 1),
                      query_labels=torch.tensor([[0, 1]]), n_way=2)
    loss, relation_scores = model.meta_loss(episode)
    assert torch.allclose(relation_scores, torch.tensor([[[0.5, 1.1], [0.0, 0.6]]]))
    assert math.isclose(loss.item(), 1.62 / 4, rel_tol=1e-5)


def test_relation_class_features_are_per_class_sums():
    torch.manual_seed(0)
    model = RelationNetwork(image_shape=(1, 28, 28))
    z = torch.randn(2, 6, 3, 2, 2)
    labels = torch.stack([torch.tensor([2, 0, 1, 0, 2, 1]), torch.tensor([0, 0, 1, 1, 2, 2])])
    sums = model.class_features(z, labels, 3)
    for t in range(2):
        for n in range(3):
            assert torch.allclose(sums[t, n], sum(z[t, i] for i in range(6) if labels[t, i] == n))


def test_relation_module_equals_its_layers_on_each_concatenated_pair():
    """The independent computation: the paper's g_φ run layer by layer on C(class j, query i), pair by pair built
    with torch.cat, batch norm over all the pairs as in training."""
    torch.manual_seed(0)
    g_phi = RelationModule((4, 5, 5), hidden=6, fc_hidden=3)
    z_class, z_query = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 7, 4, 5, 5)
    pairs = torch.stack([torch.stack([torch.cat([z_class[t, j], z_query[t, i]]) for j in range(3)])
                         for t in range(2) for i in range(7)])  # [T * NQ, N, 2C, H, W]
    layers = nn.Sequential(*g_phi.block1, *g_phi.block2, *g_phi.fc)
    expected = layers(pairs.flatten(0, 1)).view(2, 7, 3)
    scores = g_phi(z_class, z_query)
    assert torch.allclose(scores, expected, atol=1e-6)
    scores.sum().backward()
    w = g_phi.block1[0].weight.grad.clone()
    g_phi.zero_grad()
    expected.sum().backward()
    assert torch.allclose(w, g_phi.block1[0].weight.grad, atol=1e-5)


def test_relation_module_shapes_on_omniglot():
    model = RelationNetwork(image_shape=(1, 28, 28))
    assert model.z_shape == (64, 5, 5)  # Sung et al.'s Omniglot feature maps
    scores = model.predict(Episode(torch.rand(2, 5, 1, 28, 28), torch.arange(5).repeat(2, 1),
                                   torch.rand(2, 10, 1, 28, 28), torch.arange(5).repeat(2, 2), 5))
    assert scores.shape == (2, 10, 5) and ((scores > 0) & (scores < 1)).all()


# Batch norm in evaluation

def test_batch_statistics_normalise_by_the_batch_and_keep_the_running_averages():
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
        norm.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
        norm.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    x = torch.randn(4, 3, 2, 2) * 3 + 1
    mean = x.mean((0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean((0, 2, 3), keepdim=True)  # biased, over the batch and positions
    w, b = norm.weight.view(1, 3, 1, 1), norm.bias.view(1, 3, 1, 1)
    with batch_statistics(norm):
        y = norm(x)
    assert torch.allclose(y, (x - mean) / torch.sqrt(var + norm.eps) * w + b, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in norm.state_dict().items())
    running = (x - before["running_mean"].view(1, 3, 1, 1)) / torch.sqrt(before["running_var"].view(1, 3, 1, 1) + 1e-5)
    assert torch.allclose(norm(x), running * w + b, atol=1e-5)  # outside, the running averages again


@pytest.mark.parametrize("make", [lambda shape, **kw: RelationNetwork(shape, **kw),
                                  lambda shape, **kw: ProtoNet(shape, **kw)], ids=["relation", "protonet"])
def test_transductive_evaluation_uses_each_episodes_own_statistics(make):
    """The independent computation: a copy of the trained model in training mode, one episode at a time."""
    pl.seed_everything(0)
    data = SyntheticDataModule(n_way=5, k_shot=1, n_query=3, batches_per_epoch=5, tasks_per_batch=2)
    model = make(data.image_shape, batch_norm="transductive")
    pl.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(model, data)
    data.setup("test")
    episode = next(iter(data.test_dataloader()))
    episode = data.on_after_batch_transfer(episode, 0)  # a batch of 10 test episodes
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        transductive = model.evaluate(episode)
        copy = deepcopy(model).train()
        expected = torch.cat([copy.predict(task) for task in episode.tasks()])
        model.hparams.batch_norm = "running"
        running = model.evaluate(episode)
    assert torch.allclose(transductive, expected, atol=1e-5)
    assert not torch.allclose(transductive, running, atol=1e-3)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # running averages untouched


# All three learn

# Verification pairs and cosine attention learn more slowly than ProtoNet's distances (which passes this at noise
# 0.8): in 40 steps they get easier data.
@pytest.mark.parametrize("make, noise", [
    (lambda shape: Siamese(shape), 0.3),
    (lambda shape: MatchingNetwork(shape), 0.5),
    (lambda shape: MatchingNetwork(shape, fce=True), 0.5),
    (lambda shape: RelationNetwork(shape), 0.8),
], ids=["siamese", "matching", "matching_fce", "relation"])
def test_learns_on_the_synthetic_set(make, noise):
    pl.seed_everything(0)
    data = SyntheticDataModule(n_way=5, k_shot=1, n_query=5, batches_per_epoch=40, val_episodes=50, test_episodes=100,
                               noise=noise)
    model = make(data.image_shape)
    trainer = pl.Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    before = trainer.test(model, data, verbose=False)[0]["test/acc"]
    trainer.fit(model, data)
    after = trainer.test(model, data, verbose=False)[0]["test/acc"]
    assert after > 60 and after > before + 15, (before, after)  # chance is 20%
