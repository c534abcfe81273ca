"""MANN with LRUA memory: the memory step against a hand-worked example and a plain-Python second implementation,
the controller against nn.LSTMCell, the compiled time step against the eager one, the sequence construction (label
offset, instance numbers), the logged accuracies by instance against a hand count, episode independence, and
learning."""

import math
import statistics
import sys

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lightning_meta import MANN, Episode, MetaLearner, SyntheticDataModule
from lightning_meta.algorithms.mann import Controller, LRUAMemory, MemoryState, as_sequence
from lightning_meta.errors import ConfigError


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_lrua_step_by_hand():
    """Three rows, width 2, one head, γ = 0.5, gate α = 0 (σ = ½), key (1, 0):
    w^w = ½ (0.2, 0.5, 0.3) + ½ (0, 1, 0) = (0.1, 0.75, 0.15); row 1 (usage 0.1, the least) is zeroed, then
    M = ((1, 0), (0, 0), (1, 1)) + w^w ⊗ k = ((1.1, 0), (0.75, 0), (1.15, 1)); cosines with k: 1, 1,
    1.15 / √(1.15² + 1); w^r their softmax; r = Σ w^r(i) M(i); w^u = ½ (0.9, 0.1, 0.4) + w^r + w^w;
    w^lu = 1 at the smallest usage."""
    memory = LRUAMemory(rows=3, width=2, heads=1, gamma=0.5)
    state = MemoryState(M=torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]),
                        w_r=torch.tensor([[[0.2, 0.5, 0.3]]]), w_u=torch.tensor([[0.9, 0.1, 0.4]]),
                        w_lu=torch.tensor([[0.0, 1.0, 0.0]]))
    r, new = memory(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[0.0]]), state)

    w_w = [0.1, 0.75, 0.15]
    M = [[1.1, 0.0], [0.75, 0.0], [1.15, 1.0]]
    w_r = softmax([1.0, 1.0, 1.15 / math.sqrt(1.15**2 + 1)])
    read = [sum(w_r[i] * M[i][j] for i in range(3)) for j in range(2)]
    w_u = [0.5 * u + a + b for u, a, b in zip([0.9, 0.1, 0.4], w_r, w_w)]
    w_lu = [1.0 if i == min(range(3), key=w_u.__getitem__) else 0.0 for i in range(3)]
    assert torch.allclose(new.M[0], torch.tensor(M))
    assert torch.allclose(new.w_r[0, 0], torch.tensor(w_r))
    assert torch.allclose(r[0, 0], torch.tensor(read))
    assert torch.allclose(new.w_u[0], torch.tensor(w_u))
    assert new.w_lu[0].tolist() == w_lu


def lrua_reference(M, w_r, w_u, w_lu, keys, alphas, gamma, heads, adds=None, betas=None):
    """The LRUA equations for one task in plain Python floats: several heads, several steps; the keys are written
    unless add vectors are given, and read with key strength 1 unless β are given."""
    rows = len(M)
    reads = []
    for t, (k, alpha) in enumerate(zip(keys, alphas)):
        a = k if adds is None else adds[t]
        beta = [1.0] * heads if betas is None else betas[t]
        gate = [1 / (1 + math.exp(-a)) for a in alpha]
        w_w = [[gate[h] * w_r[h][i] + (1 - gate[h]) * w_lu[i] for i in range(rows)] for h in range(heads)]
        least = min(range(rows), key=w_u.__getitem__)
        M = [[0.0] * len(row) if i == least else list(row) for i, row in enumerate(M)]
        M = [[M[i][j] + sum(w_w[h][i] * a[h][j] for h in range(heads)) for j in range(len(M[i]))]
             for i in range(rows)]
        w_r = [softmax([beta[h] * cosine(k[h], M[i]) for i in range(rows)]) for h in range(heads)]
        reads.append([[sum(w_r[h][i] * M[i][j] for i in range(rows)) for j in range(len(M[0]))]
                      for h in range(heads)])
        w_u = [gamma * w_u[i] + sum(w_r[h][i] + w_w[h][i] for h in range(heads)) for i in range(rows)]
        smallest = sorted(range(rows), key=lambda i: (w_u[i], i))[:heads]
        w_lu = [1.0 if i in smallest else 0.0 for i in range(rows)]
    return reads, M, w_u


@pytest.mark.parametrize("add_vector", [False, True], ids=["keys written", "add vectors written"])
@pytest.mark.parametrize("key_strength", [False, True], ids=["beta 1", "beta"])
def test_lrua_matches_a_plain_python_implementation_over_several_steps_and_heads(add_vector, key_strength):
    torch.manual_seed(0)
    rows, width, heads, steps, gamma = 6, 3, 2, 5, 0.9
    memory = LRUAMemory(rows, width, heads, gamma).double()
    keys, alphas = torch.randn(steps, 1, heads, width).tanh().double(), torch.randn(steps, 1, heads).double()
    adds = torch.randn(steps, 1, heads, width).tanh().double() if add_vector else [None] * steps
    betas = 3 * torch.rand(steps, 1, heads).double() if key_strength else [None] * steps
    state = memory.initial_state(1, keys)
    M_0 = [[1e-6] * width for _ in range(rows)]  # the initial state: tiny constant memory, no reads, no usage
    w_lu_0 = [1.0] * heads + [0.0] * (rows - heads)  # all usages tie at 0: the first rows count as least used
    expected_reads, expected_M, expected_w_u = lrua_reference(M_0, [[0.0] * rows] * heads, [0.0] * rows, w_lu_0,
                                                              keys[:, 0].tolist(), alphas[:, 0].tolist(), gamma, heads,
                                                              adds[:, 0].tolist() if add_vector else None,
                                                              betas[:, 0].tolist() if key_strength else None)
    reads = []
    for k, alpha, a, beta in zip(keys, alphas, adds, betas):
        r, state = memory(k, alpha, state, beta, a)
        reads.append(r[0])
    assert torch.allclose(torch.stack(reads), torch.tensor(expected_reads, dtype=torch.float64))
    assert torch.allclose(state.M[0], torch.tensor(expected_M, dtype=torch.float64))
    assert torch.allclose(state.w_u[0], torch.tensor(expected_w_u, dtype=torch.float64))


def episode(T=2, n=3, k=1, q=2, d=5, seed=0, keys=(1, 2)):
    g = torch.Generator().manual_seed(seed)
    return Episode(support=torch.randn(T, n * k, d, generator=g), support_labels=torch.arange(n).repeat_interleave(k)
                   .repeat(T, 1), query=torch.randn(T, n * q, d, generator=g),
                   query_labels=torch.arange(n).repeat_interleave(q).repeat(T, 1), n_way=n, keys=torch.tensor(keys))


def test_sequence_is_a_shuffle_of_the_episode_with_instance_numbers():
    e = episode(T=2, n=3, k=2, q=3)
    seq = as_sequence(e)
    for t in range(2):
        examples = torch.cat([e.support[t], e.query[t]])
        labels = torch.cat([e.support_labels[t], e.query_labels[t]])
        for x, y, n in zip(seq.x[t], seq.y[t], seq.instance[t]):
            i = (examples == x).all(1).nonzero().item()  # every shown example is one of the episode's
            assert labels[i] == y
        seen = {}
        for y, n in zip(seq.y[t].tolist(), seq.instance[t].tolist()):
            seen[y] = seen.get(y, 0) + 1
            assert n == seen[y]
        assert sorted(seen.values()) == [5, 5, 5]
    assert not torch.equal(seq.y[0], seq.y[1])  # each task has its own order


@pytest.mark.parametrize("memory", [True, False], ids=["mann", "lstm"])
def test_step_t_sees_the_label_of_step_t_minus_1_and_never_its_own(memory, monkeypatch):
    model = MANN(image_shape=(5,), n_way=3, controller=8, memory=memory, memory_rows=6, memory_width=4, heads=2)
    inputs = []
    project = model.lstm.project
    monkeypatch.setattr(model.lstm, "project", lambda u: inputs.append(u) or project(u))
    seq = as_sequence(episode(keys=(3, 4)))
    logits = model(seq)
    labels = inputs[0][:, :, 5:8]  # [T, L, N]: the label part of the controller's input
    assert torch.equal(labels[:, 0], torch.zeros(2, 3))
    assert torch.equal(labels[:, 1:], F.one_hot(seq.y[:, :-1], 3).float())
    t = 4  # another label at step t changes the outputs from step t + 1 on, and none before
    seq.y[:, t] = (seq.y[:, t] + 1) % 3
    changed = (model(seq) != logits).any(-1).any(0)  # [L]
    assert not changed[: t + 1].any() and changed[t + 1]


def test_controller_is_an_lstm_cell_on_the_concatenated_input():
    """The controller's projected input plus its recurrent step against nn.LSTMCell on [u_t, r_{t−1}] with the same
    parameters, over a few steps, forward and gradients."""
    torch.manual_seed(0)
    D, R, C, T = 6, 4, 5, 3
    controller = Controller(D + R, C)
    cell = torch.nn.LSTMCell(D + R, C)
    cell.load_state_dict(controller.state_dict())
    u, reads = torch.randn(T, 4, D), torch.randn(T, 4, R)
    h = c = h_ref = c_ref = torch.zeros(T, C)
    gates_u, W_rh = controller.project(u), controller.recurrent_weight(R)
    for t in range(4):
        h, c = controller.step(gates_u[:, t], reads[:, t], (h, c), W_rh)
        h_ref, c_ref = cell(torch.cat([u[:, t], reads[:, t]], dim=-1), (h_ref, c_ref))
        assert torch.allclose(h, h_ref, atol=1e-6) and torch.allclose(c, c_ref, atol=1e-6)
    (h.sum() + c.square().sum()).backward()
    (h_ref.sum() + c_ref.square().sum()).backward()
    for name, p in controller.named_parameters():
        assert torch.allclose(p.grad, dict(cell.named_parameters())[name].grad, atol=1e-5), name


@pytest.mark.parametrize("memory", [True, False], ids=["mann", "lstm"])
def test_compiled_time_step_gives_the_eager_numbers(memory):
    torch.manual_seed(0)
    eager = MANN(image_shape=(5,), n_way=3, controller=8, memory=memory, memory_rows=6, memory_width=4, heads=2,
                 add_vector=True)
    compiled = MANN(image_shape=(5,), n_way=3, controller=8, memory=memory, memory_rows=6, memory_width=4, heads=2,
                    add_vector=True, compile_step=True)
    compiled.load_state_dict(eager.state_dict())
    seq = as_sequence(episode(keys=(3, 4)))
    logits, logits_compiled = eager(seq), compiled(seq)
    assert torch.allclose(logits, logits_compiled, atol=1e-5)
    logits.square().sum().backward()
    logits_compiled.square().sum().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_episodes_are_independent():
    """A task's logits do not depend on the other tasks of its batch nor on what the model saw before."""
    model = MANN(image_shape=(5,), n_way=3, controller=8, memory_rows=6, memory_width=4, heads=2)
    a, b = episode(seed=1, keys=(5, 6)), episode(seed=2, keys=(7, 6))
    seq_a, seq_b = as_sequence(a), as_sequence(b)
    first = model(seq_a)
    model(seq_b)
    again = model(seq_a)
    assert torch.equal(first, again)
    alone = model(as_sequence(a.tasks()[0]))
    assert torch.allclose(first[:1], alone, atol=1e-6)


def test_memory_changes_the_predictions_of_a_model_with_it():
    torch.manual_seed(0)
    with_memory = MANN(image_shape=(5,), n_way=3, controller=8, memory_rows=6, memory_width=4, heads=2)
    seq = as_sequence(episode())
    logits = with_memory(seq)
    with_memory.key.weight.data.zero_()  # all keys 0: every read is the uniform average of the memory
    with_memory.key.bias.data.zero_()
    assert not torch.allclose(logits, with_memory(seq))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="heads <= memory_rows"):
        MANN(image_shape=(5,), n_way=3, memory_rows=2, heads=4)
    with pytest.raises(ConfigError, match="gamma"):
        MANN(image_shape=(5,), n_way=3, gamma=1.5)
    with pytest.raises(ConfigError, match="model.n_way"):
        MANN(image_shape=(5,), n_way=3)(as_sequence(episode(n=4)))


def test_compiled_step_without_a_compiler_is_refused(monkeypatch, tmp_path):
    """The compiler torch.compile looks for: the one $CXX names (a command, perhaps with flags), else g++ (clang++ on
    macOS) on the PATH."""
    refused = pytest.raises(ConfigError, match="needs a C\\+\\+ compiler.*compile_step false")
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with refused:
        MANN(image_shape=(5,), n_way=3, compile_step=True)
    MANN(image_shape=(5,), n_way=3, compile_step=False)
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no compiler on the PATH
    with refused:
        MANN(image_shape=(5,), n_way=3, compile_step=True)
    compiler = tmp_path / ("clang++" if sys.platform == "darwin" else "g++")
    compiler.write_text("#!/bin/sh\n")
    compiler.chmod(0o755)
    MANN(image_shape=(5,), n_way=3, compile_step=True)
    monkeypatch.setenv("CXX", f"{compiler} -O2")
    MANN(image_shape=(5,), n_way=3, compile_step=True)


def test_mann_keeps_to_the_algorithm_contract():
    """Training, validation, test and their logging are the base class's; MANN supplies meta_loss, predict and
    episode_scores."""
    for name in ("training_step", "validation_step", "test_step", "evaluation_step", "on_validation_epoch_end",
                 "on_test_epoch_end", "log_scores"):
        assert getattr(MANN, name) is getattr(MetaLearner, name), name
    assert MANN.episode_scores is not MetaLearner.episode_scores and MANN.evaluated_on_training_task


def test_logged_accuracies_by_instance_are_those_of_the_shuffled_sequences():
    """val/ and test/ metrics of three fixed 3-way 1-shot batches with 2 queries per class (sequences of 3 instances
    a class) against a hand count over ``run``'s logits: acc_instance_n is the accuracy on the n-th example of a class
    in each task's sequence, averaged over the tasks with 1.96 s / sqrt(tasks) beside it; acc is the 2nd instance
    (K + 1); instances 5 and 10, which the sequences do not reach, are not logged."""
    torch.manual_seed(0)
    model = MANN(image_shape=(5,), n_way=3, controller=8, memory_rows=6, memory_width=4, heads=2)
    batches = [episode(T=2, n=3, k=1, q=2, seed=s, keys=(2 * s + 10, 2 * s + 11)) for s in range(3)]
    right = {n: [] for n in (1, 2, 3)}  # n -> each task's accuracy (%) on the n-th instances
    with torch.no_grad():
        for batch in batches:
            seq, logits = model.run(batch)
            for y, predicted in zip(seq.y.tolist(), logits.argmax(-1).tolist()):
                seen, correct = {}, {n: [] for n in right}
                for label, guess in zip(y, predicted):
                    seen[label] = seen.get(label, 0) + 1
                    correct[seen[label]].append(guess == label)
                for n in right:
                    right[n].append(100 * sum(correct[n]) / len(correct[n]))
    expected = {}
    for n, accuracies in right.items():
        expected[f"acc_instance_{n}"] = statistics.mean(accuracies)
        expected[f"acc_instance_{n}_ci95"] = 1.96 * statistics.stdev(accuracies) / len(accuracies) ** 0.5
    expected["acc"], expected["acc_ci95"] = expected["acc_instance_2"], expected["acc_instance_2_ci95"]
    assert len({expected[f"acc_instance_{n}"] for n in right}) > 1  # the instances differ: the test can tell them apart

    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        logged = run(model, DataLoader(batches, batch_size=None), verbose=False)[0]
        assert set(logged) == {f"{stage}/{name}" for name in expected}
        for name, value in expected.items():
            assert logged[f"{stage}/{name}"] == pytest.approx(value, rel=1e-5, abs=1e-5), (stage, name)


def test_learns_on_the_synthetic_set():
    """Episodes of 3 classes, 4 instances each (12-step sequences), inputs centred; test/acc is the 2nd-instance
    accuracy (chance 33%). Uncentred synthetic inputs, all alike in cosine, are not learned in this budget."""
    steps = 800
    pl.seed_everything(0)
    data = SyntheticDataModule(shape=(64,), n_way=3, k_shot=1, n_query=3, tasks_per_batch=16, batches_per_epoch=steps,
                               val_episodes=50, test_episodes=200, noise=0.1, mean=0.5, std=0.3)
    model = MANN(data.image_shape, n_way=3, controller=64, memory_rows=32, memory_width=16, add_vector=True, lr=3e-3)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, data)
    result = trainer.test(model, data, verbose=False)[0]
    assert result["test/acc"] > 55, result
    assert result["test/acc_instance_3"] > 55, result
    assert result["test/acc_instance_2"] == result["test/acc"]
