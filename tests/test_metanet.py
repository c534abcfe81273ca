"""Meta Networks: the gradient preprocessing by hand, per-example and per-chunk gradients against plain autograd,
layer augmentation against explicit sums, detached generator inputs, the fast weights and the memory attention
at work, and learning."""

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lightning_meta import Episode, MetaNet, SyntheticDataModule
from lightning_meta.algorithms import metanet
from lightning_meta.algorithms.metanet import FastWeightNet, preprocess
from lightning_meta.errors import ConfigError


def test_preprocess_by_hand():
    """(max(log(|g| + ε) / 7, −1), clamp(e^7 g, −1, 1)) for g = 0, 1, 1e-3, −1e-4."""
    out = preprocess(torch.tensor([0.0, 1.0, 1e-3, -1e-4], dtype=torch.float64))
    expected = [[-1.0, 0.0], [0.0, 1.0], [math.log(1e-3) / 7, 1.0], [-1.0, -1e-4 * math.exp(7)]]
    assert torch.allclose(out, torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def small_episode(T=2, n=3, k=2, q=2, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Episode(torch.rand(T, n * k, 1, size, size, generator=g), torch.arange(n).repeat_interleave(k).repeat(T, 1),
                   torch.rand(T, n * q, 1, size, size, generator=g), torch.arange(n).repeat_interleave(q).repeat(T, 1),
                   n)


def test_layer_augmentation_is_relu_slow_plus_relu_fast_by_explicit_sums():
    """One conv block on a 3x3 single-channel image, one filter: ReLU(Σ W x) + ReLU(Σ W* x) at the centre pixel,
    then the 2x2 max-pool with ceil mode over the 3x3 map, fc1 and fc2 likewise."""
    torch.manual_seed(0)
    net = FastWeightNet((1, 3, 3), hidden=1, blocks=1, n_out=2).double()
    W = {k: torch.randn_like(w) for k, w in net.weights.items()}
    fast = {k: torch.randn_like(w) for k, w in net.weights.items()}
    x = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    padded = F.pad(x, (1, 1, 1, 1))[0, 0]
    conv_map = [[max(0.0, sum(W["conv0"][0, 0, a, b].item() * padded[i + a, j + b].item() for a in range(3)
                              for b in range(3)))
                 + max(0.0, sum(fast["conv0"][0, 0, a, b].item() * padded[i + a, j + b].item() for a in range(3)
                                for b in range(3))) for j in range(3)] for i in range(3)]
    pooled = [max(conv_map[i][j] for i in rows for j in cols)  # ceil mode: windows {0,1} and {2}
              for rows in ([0, 1], [2]) for cols in ([0, 1], [2])]
    hidden = max(0.0, sum(W["fc1"][0, f].item() * pooled[f] for f in range(4))) + \
        max(0.0, sum(fast["fc1"][0, f].item() * pooled[f] for f in range(4)))
    logits = [(W["fc2"][c, 0].item() + fast["fc2"][c, 0].item()) * hidden for c in range(2)]
    assert torch.allclose(net.logits(W, x, fast)[0], torch.tensor(logits, dtype=torch.float64))
    key = sum((W["fc1"][0, f].item() + fast["fc1"][0, f].item()) * pooled[f] for f in range(4))  # no ReLU
    assert math.isclose(net.fc1(W, net.features(W, x, fast), fast).item(), key, rel_tol=1e-9)


@pytest.mark.parametrize("init", ["lecun", "he", "torch"])
def test_slow_weights_start_with_variance_gain_squared_over_fan_in(init):
    """conv0 has fan_in 1·3·3 = 9, conv1 64·3·3 = 576, fc1 64 (one 1x1 map of 64 after five blocks on 28x28), fc2
    64. Normal with gain √2 before a ReLU under "he", 1 for fc2 and under "lecun"; under "torch", U(±1/√fan_in), of
    variance 1 / (3 fan_in), drawn as nn.Conv2d draws it."""
    torch.manual_seed(0)
    net = FastWeightNet((1, 28, 28), hidden=64, blocks=5, n_out=5, init=init)
    relu_gain = {"lecun": 1.0, "he": 2.0, "torch": 1 / 3}[init]
    for name, fan_in, variance in [("conv0", 9, relu_gain / 9), ("conv1", 576, relu_gain / 576),
                                   ("fc1", 64, relu_gain / 64), ("fc2", 64, (1 / 3 if init == "torch" else 1) / 64)]:
        w = net.weights[name]
        assert w[0].numel() == fan_in
        assert abs(w.var().item() / variance - 1) < (0.4 if w.numel() < 1000 else 0.05), name
        assert abs(w.mean().item()) < 4 * math.sqrt(variance / w.numel()), name
    if init == "torch":
        torch.manual_seed(0)
        assert torch.equal(net.weights["conv0"], torch.nn.Conv2d(1, 64, 3, bias=False).weight)
    with pytest.raises(ConfigError, match="model.init must be 'lecun', 'he' or 'torch'"):
        MetaNet((1, 28, 28), n_way=5, init="xavier")


def test_per_example_and_per_chunk_gradients_match_autograd():
    torch.manual_seed(0)
    model = MetaNet((1, 12, 12), n_way=3, hidden=4, blocks=2, task_steps=2).double()
    e = small_episode()
    e.support = e.support.double()
    g = model.per_example_gradients(model.b, e.support, e.support_labels, 3)  # per group [T, NK, P]
    names = model.b.groups
    for t in range(2):
        for i in range(6):
            model.zero_grad()
            loss = F.cross_entropy(model.b.logits(dict(model.b.weights), e.support[t, i:i + 1]),
                                   e.support_labels[t, i:i + 1])
            loss.backward()
            for group, keys in names.items():
                expected = torch.cat([model.b.weights[k].grad.flatten() for k in keys])
                assert torch.allclose(g[group][t, i], expected)
    # d reads one gradient per chunk, of the mean loss over the chunk (examples c, c + 2, c + 4)
    seen = []
    model.d.forward = lambda group, chunk_grads: seen.append((group, chunk_grads)) or chunk_grads[0] * 0
    model.task_fast_weights(e.support, e.support_labels, 3)
    for group, chunk_grads in seen:
        assert chunk_grads.shape[:2] == (2, 2)  # [S, T, P]
        for c in range(2):
            U = {k: w.detach().requires_grad_() for k, w in model.u.weights.items()}  # fc2 is not trained, see MetaNet
            loss = F.cross_entropy(model.u.logits(U, e.support[1, c::2]), e.support_labels[1, c::2])
            expected = torch.cat([g.flatten() for g in torch.autograd.grad(loss, [U[k] for k in names[group]])])
            assert torch.allclose(chunk_grads[c, 1], expected)


def test_generator_inputs_are_detached():
    model = MetaNet((1, 12, 12), n_way=3, hidden=4, blocks=2)
    inputs = []
    original = metanet.preprocess
    metanet.preprocess = lambda g, p=7.0: inputs.append(g) or original(g, p)
    try:
        model.meta_loss(small_episode())[0].backward()
    finally:
        metanet.preprocess = original
    assert len(inputs) == 4 and not any(g.requires_grad for g in inputs)  # d and m, conv and fc
    assert model.b.weights["conv0"].grad is not None  # while the slow weights do learn from the query loss


def test_fast_weights_change_the_predictions():
    torch.manual_seed(0)
    model = MetaNet((1, 12, 12), n_way=3, hidden=4, blocks=2)
    e = small_episode()
    slow_only = model.b.logits(dict(model.b.weights), e.query.flatten(0, 1)).unflatten(0, (2, 6))
    assert not torch.allclose(model.predict(e), slow_only, atol=1e-4)


@pytest.mark.parametrize("learn_scale", [False, True])
def test_memory_attention_is_a_softmax_of_scaled_cosines_by_hand(learn_scale):
    """Keys r'_i = (1, 0), (0, 1), (−1, 0), (1, 1) and the query r = (2, 0): cosines 1, 0, −1, 1/√2, and with s = 3
    a_i = E_i / Σ_j E_j, E_i = exp(s · cos_i). The scale s gets ∂a_0/∂s = a_0 (c_0 − Σ_j a_j c_j) when it is learned,
    and no gradient otherwise."""
    model = MetaNet((1, 12, 12), n_way=3, hidden=4, blocks=2, scale=3.0, learn_scale=learn_scale)
    r_support = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]]])
    c = [1.0, 0.0, -1.0, 1 / math.sqrt(2)]
    E = [math.exp(3.0 * ci) for ci in c]
    a = model.attend(torch.tensor([[[2.0, 0.0]]]), r_support)  # [T, NQ, NK] = [1, 1, 4]
    assert torch.allclose(a[0, 0], torch.tensor([Ei / sum(E) for Ei in E]))
    if learn_scale:
        a[0, 0, 0].backward()
        a_hand = [Ei / sum(E) for Ei in E]
        expected = a_hand[0] * (c[0] - sum(ai * ci for ai, ci in zip(a_hand, c)))
        assert math.isclose(model.scale.grad.item(), expected, rel_tol=1e-5)
    else:
        assert not model.scale.requires_grad and not a.requires_grad


def test_metanet_refuses_a_nonpositive_scale():
    with pytest.raises(ConfigError, match="model.scale"):
        MetaNet((1, 12, 12), n_way=3, hidden=4, blocks=2, scale=-1.0)


def test_metanet_minus_has_no_task_level_fast_weights():
    """task_fast_weights: false (the paper's MetaNet-): no d, and the memory keys are u's plain fc1 outputs."""
    torch.manual_seed(0)
    model = MetaNet((1, 12, 12), n_way=3, hidden=4, blocks=2, task_fast_weights=False)
    e = small_episode()
    seen = []
    attend = model.attend
    model.attend = lambda r_query, r_support: seen.append((r_query, r_support)) or attend(r_query, r_support)
    assert model.d is None and model.predict(e).shape == (2, 6, 3)
    Q = dict(model.u.weights)
    plain = model.u.fc1(Q, model.u.features(Q, e.support.flatten(0, 1))).unflatten(0, (2, 6))
    assert torch.allclose(seen[0][1], plain)


def test_an_episode_of_fewer_classes_uses_the_first_outputs():
    """A 5-output MetaNet on 3-way episodes predicts as a 3-output MetaNet holding the first 3 rows of its u.fc2 and
    b.fc2: the rows of the absent classes change nothing (d and m are coordinate-wise, and those rows only score the
    absent classes)."""
    torch.manual_seed(0)
    wide = MetaNet((1, 12, 12), n_way=5, hidden=4, blocks=2, scale=5.0)
    narrow = MetaNet((1, 12, 12), n_way=3, hidden=4, blocks=2, scale=5.0)
    state = wide.state_dict()
    state["u.weights.fc2"], state["b.weights.fc2"] = state["u.weights.fc2"][:3], state["b.weights.fc2"][:3]
    narrow.load_state_dict(state)
    e = small_episode()
    predictions = wide.predict(e)
    assert predictions.shape == (2, 6, 3)
    assert torch.allclose(predictions, narrow.predict(e), atol=1e-6)
    assert not torch.allclose(predictions, wide.b.logits(dict(wide.b.weights), e.query.flatten(0, 1))[:, :3]
                              .unflatten(0, (2, 6)))


def test_metanet_refuses_episodes_of_more_classes_than_its_outputs():
    data = SyntheticDataModule(shape=(1, 12, 12), n_way=5, k_shot=1, n_query=1, eval_n_way=3)
    MetaNet((1, 12, 12), n_way=5, hidden=4, blocks=2).validate_setup(data, False, 10)  # 3-way evaluation is fine
    with pytest.raises(ConfigError, match="model.n_way is 4 but the data gives 5-way train"):
        MetaNet((1, 12, 12), n_way=4, hidden=4, blocks=2).validate_setup(data, False, 10)


def train_on_synthetic(steps: int) -> tuple[MetaNet, SyntheticDataModule]:
    """Trains with the attention scale s learned from 10 and He initialisation: with the paper's s = 1, these 60 steps
    reached 19.9% (he) and 43.6% (lecun) on the test episodes."""
    pl.seed_everything(0)
    data = SyntheticDataModule(shape=(1, 16, 16), n_way=5, k_shot=1, n_query=5, batches_per_epoch=steps,
                               val_episodes=50, test_episodes=100, noise=0.3)
    model = MetaNet(data.image_shape, n_way=5, hidden=16, blocks=3, scale=10.0, learn_scale=True, init="he")
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False)
    trainer.fit(model, data)
    return model, data


@pytest.fixture(scope="module")
def trained():
    return train_on_synthetic(60)


def test_learns_on_the_synthetic_set(trained):
    model, data = trained
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    assert trainer.test(model, data, verbose=False)[0]["test/acc"] > 60  # chance is 20%


def test_uniform_memory_attention_is_worse_on_a_trained_model(trained):
    model, data = trained
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    with_attention = trainer.test(model, data, verbose=False)[0]["test/acc"]
    model.attend = lambda r_query, r_support: torch.full((*r_query.shape[:2], r_support.shape[1]),
                                                         1 / r_support.shape[1])
    uniform = trainer.test(model, data, verbose=False)[0]["test/acc"]
    del model.attend
    assert uniform < with_attention - 5, (uniform, with_attention)


@pytest.mark.parametrize("seed", range(6))
def test_every_generator_network_learns_from_the_first_step(seed):
    """The paper's layout on 28x28 images in [0, 1], 5-way 1-shot: after one backward pass every parameter of d and m
    has a non-zero gradient. The images are non-negative, so a fast conv layer whose weights all start negative
    outputs ReLU(W* x) = 0 everywhere and passes no gradient to the network that made them: before the generators'
    outputs were centred, m's network for the conv weights got none with 3 of these 6 seeds (9 of the first 12)."""
    torch.manual_seed(seed)
    model = MetaNet((1, 28, 28), n_way=5, hidden=64, blocks=5)
    model.meta_loss(small_episode(T=1, n=5, k=1, q=2, size=28, seed=seed))[0].backward()
    for name, p in [*model.d.named_parameters(prefix="d"), *model.m.named_parameters(prefix="m")]:
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_a_zero_gradient_gives_a_zero_fast_weight_at_first():
    """m on one zero gradient, d on ``task_steps`` of them, right after construction."""
    torch.manual_seed(0)
    model = MetaNet((1, 12, 12), n_way=3, hidden=8, blocks=2, task_steps=3)
    for group in metanet.GROUPS:
        assert model.m(group, torch.zeros(4, 7)).abs().max() < 1e-7
        assert model.d(group, torch.zeros(3, 4, 7)).abs().max() < 1e-7
        assert model.m(group, torch.tensor([-1e-2, 1e-2])).unique().numel() == 2  # gradients still make a difference
