"""Transductive inference (``model.inference``): BD-CSPN and TIM-GD against plain loops of the papers' equations,
TIM's logits against their closed form, the batched TIM-GD against one Adam run per task, and the setting as the
learners and train.py take it."""

import math
import re

import pytest
import torch
from test_cli import TINY, ok, train

from lightning_meta import ConfigError, MatchingNetwork, ProtoNet, RelationNetwork, SimpleShot
from lightning_meta.algorithms.transductive import bd_cspn, tim, tim_logits, tim_loss
from lightning_meta.episode import Episode


def features(T=3, N=4, K=2, Q=5, D=6, seed=0):
    """Support [T, NK, D] and query [T, NQ, D] features around one mean per class, with their labels."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(T, N, 1, D, generator=g)
    z_s = (mu + 0.8 * torch.randn(T, N, K, D, generator=g)).flatten(1, 2).double()
    z_q = (mu + 0.8 * torch.randn(T, N, Q, D, generator=g) + 0.5).flatten(1, 2).double()  # a shifted domain
    y_s = torch.arange(N).repeat_interleave(K).expand(T, -1)
    return z_s, y_s, z_q, N


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def bd_cspn_by_loops(z_s, y_s, z_q, n_way, epsilon, top):
    """The paper's equations, one task, class and example at a time, in Python floats."""
    scores = []
    for t in range(z_s.shape[0]):
        S, Q, y = z_s[t].tolist(), z_q[t].tolist(), y_s[t].tolist()
        D = len(S[0])
        xi = [sum(x[d] for x in S) / len(S) - sum(x[d] for x in Q) / len(Q) for d in range(D)]
        Q = [[x[d] + xi[d] for d in range(D)] for x in Q]
        P = [[sum(S[i][d] for i in range(len(S)) if y[i] == n) / y.count(n) for d in range(D)] for n in range(n_way)]
        pseudo = [max(range(n_way), key=lambda n: cos(q, P[n])) for q in Q]
        rectified = []
        for n in range(n_way):
            taken = sorted((q for q, label in zip(Q, pseudo) if label == n), key=lambda q: -cos(q, P[n]))
            members = [x for x, label in zip(S, y) if label == n] + taken[: top if top is not None else len(taken)]
            e = [math.exp(epsilon * cos(x, P[n])) for x in members]
            rectified.append([sum(w / sum(e) * x[d] for w, x in zip(e, members)) for d in range(D)])
        scores.append([[epsilon * cos(q, p) for p in rectified] for q in Q])
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("top", [None, 1, 3])
def test_bd_cspn_rectified_prototypes_equal_the_papers_equations_by_loops(top):
    z_s, y_s, z_q, N = features()
    expected = bd_cspn_by_loops(z_s, y_s, z_q, N, epsilon=10.0, top=top)
    torch.testing.assert_close(bd_cspn(z_s, y_s, z_q, N, top=top), expected)


def test_bd_cspn_with_z_zero_is_the_shifted_nearest_prototype_by_cosine():
    """With no query taken in (Z = 0) and ε = 1, P'_n is the softmax-weighted mean of class n's support alone."""
    z_s, y_s, z_q, N = features(K=1)  # one shot: P'_n = P_n = the support example
    shifted = z_q + z_s.mean(1, keepdim=True) - z_q.mean(1, keepdim=True)
    expected = torch.nn.functional.cosine_similarity(shifted[:, :, None], z_s[:, None], dim=-1)
    torch.testing.assert_close(bd_cspn(z_s, y_s, z_q, N, epsilon=1.0, top=0), expected)


def test_tim_logits_are_minus_tau_half_the_squared_distance():
    z_s, _, z_q, _ = features()
    W = z_s[:, :4]
    expected = -15 / 2 * ((z_q[:, :, None] - W[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(tim_logits(z_q, W, 15.0), expected)


def tim_loss_by_loops(logits_s, y_s, logits_q, weights):
    """λ CE − (α H(Y_Q) − β H(Y_Q|X_Q)) of one task at a time, in Python floats: the three terms per task."""
    terms = []
    for t in range(logits_s.shape[0]):
        ls, lq, y = logits_s[t].tolist(), logits_q[t].tolist(), y_s[t].tolist()
        ce = sum(math.log(sum(math.exp(v) for v in row)) - row[label] for row, label in zip(ls, y)) / len(ls)
        p = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in lq]
        conditional = -sum(sum(pn * math.log(pn) for pn in row) for row in p) / len(p)
        marginal_p = [sum(row[n] for row in p) / len(p) for n in range(len(p[0]))]
        marginal = -sum(pn * math.log(pn) for pn in marginal_p)
        terms.append((ce, marginal, conditional))
    lam, alpha, beta = weights
    return sum(lam * ce - (alpha * m - beta * c) for ce, m, c in terms), terms


def test_tims_loss_and_its_two_entropies_equal_plain_loops():
    z_s, y_s, z_q, N = features()
    W = torch.randn(3, N, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logits_s, logits_q = tim_logits(z_s, W, 2.0), tim_logits(z_q, W, 2.0)
    loss, ce, marginal, conditional = tim_loss(logits_s, y_s, logits_q, (0.1, 1.0, 0.1))
    expected, terms = tim_loss_by_loops(logits_s, y_s, logits_q, (0.1, 1.0, 0.1))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    torch.testing.assert_close(torch.stack([ce, marginal, conditional], -1), torch.tensor(terms, dtype=torch.float64))
    assert all(0 < m <= math.log(N) for _, m, _ in terms)  # an entropy of N outcomes


def test_batched_tim_gd_equals_one_adam_run_per_task():
    """The tasks' weights W_t are fitted in one batch; each must follow its own Adam run on its own task's loss (the
    loops' loss), from the class means of its L2-normalised support features."""
    z_s, y_s, z_q, N = features()
    batched = tim(z_s, y_s, z_q, N, lr=0.05, iterations=15)
    for t in range(3):
        s = torch.nn.functional.normalize(z_s[t : t + 1], dim=-1)
        q = torch.nn.functional.normalize(z_q[t : t + 1], dim=-1)
        W = torch.stack([s[0, y_s[t] == n].mean(0) for n in range(N)])[None].requires_grad_(True)
        adam = torch.optim.Adam([W], lr=0.05)
        for _ in range(15):
            logits_s, logits_q = -7.5 * ((s[:, :, None] - W[:, None]) ** 2).sum(-1), -7.5 * ((q[:, :, None] - W[:, None]) ** 2).sum(-1)
            p = logits_q.softmax(-1)
            marginal = -(p.mean(1) * p.mean(1).log()).sum()
            conditional = -(p * p.log()).sum(-1).mean()
            ce = torch.nn.functional.cross_entropy(logits_s[0], y_s[t])
            loss = 0.1 * ce - (marginal - 0.1 * conditional)
            adam.zero_grad()
            loss.backward()
            adam.step()
        expected = -7.5 * ((q[:, :, None] - W.detach()[:, None]) ** 2).sum(-1)
        torch.testing.assert_close(batched[t : t + 1], expected)


def test_tim_moves_the_weights_toward_the_queries_of_a_shifted_domain():
    """The queries sit 0.5 off the support in every coordinate: TIM's query accuracy beats the nearest class mean's
    (its own starting point) over 20 tasks."""
    z_s, y_s, z_q, N = features(T=20, seed=3)
    y_q = torch.arange(N).repeat_interleave(5).expand(20, -1)
    start = tim(z_s, y_s, z_q, N, iterations=0)
    fitted = tim(z_s, y_s, z_q, N, lr=1e-3)
    accuracy = lambda scores: (scores.argmax(-1) == y_q).double().mean().item()  # noqa: E731
    assert accuracy(fitted) > accuracy(start)


def episode(T=2, N=3, K=2, Q=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N).repeat_interleave(K).expand(T, -1)
    return Episode(torch.rand(T, N * K, 1, 28, 28, generator=g), labels, torch.rand(T, N * Q, 1, 28, 28, generator=g),
                   torch.arange(N).repeat_interleave(Q).expand(T, -1), N)


@pytest.mark.parametrize("inference", ["bd_cspn", "tim"])
def test_a_learner_evaluates_by_the_rule_on_its_own_features(inference):
    """ProtoNet: f_θ's embeddings; SimpleShot: its CL2N features; Matching with FCE: the context embeddings."""
    e = episode()
    rule = {"bd_cspn": bd_cspn, "tim": lambda *a: tim(*a, iterations=5)}[inference]
    options = {"iterations": 5} if inference == "tim" else None
    for model in (ProtoNet((1, 28, 28), inference=inference, inference_options=options),
                  SimpleShot((1, 28, 28), inference=inference, inference_options=options, num_classes=4),
                  MatchingNetwork((1, 28, 28), fce=True, inference=inference, inference_options=options)):
        model.eval()
        with torch.no_grad():
            if isinstance(model, SimpleShot):
                model.train_mean.normal_()
                z_s, z_q = (model.transform(z.flatten(2)) for z in model.embed(e))
            elif isinstance(model, MatchingNetwork):
                z_s, z_q = model.context_embeddings(e)
            else:
                z_s, z_q = (z.flatten(2) for z in model.embed(e))
            torch.testing.assert_close(model.evaluate(e), rule(z_s, e.support_labels, z_q, 3))
            assert not torch.allclose(model.evaluate(e), model.predict(e))


def test_the_setting_is_checked_before_any_work():
    with pytest.raises(ConfigError, match="model.inference must be none, bd_cspn or tim"):
        ProtoNet((1, 28, 28), inference="tim_adm")
    with pytest.raises(ConfigError, match="tim takes temperature, weights, lr, iterations, not steps"):
        ProtoNet((1, 28, 28), inference="tim", inference_options={"steps": 3})
    with pytest.raises(ConfigError, match="set model.inference too"):
        ProtoNet((1, 28, 28), inference_options={"top": 3})
    with pytest.raises(ConfigError, match="RelationNetwork compares examples with a learned module"):
        RelationNetwork((1, 28, 28), inference="bd_cspn")


def test_train_py_tests_a_checkpoint_transductively(tmp_path):
    """Trained plainly, then tested with TIM-GD from the checkpoint, in the trainer's default inference mode."""
    common = ["--config", "proto_synthetic.yaml", "--data.batches_per_epoch", 3, "--data.val_episodes", 10,
              "--data.test_episodes", 10, *TINY]
    ok(train(*common, "--trainer.max_steps", 3, log_root=tmp_path))
    ckpt = tmp_path / "proto_synthetic" / "version_0" / "checkpoints" / "last.ckpt"
    out = ok(train(*common, "--ckpt_path", ckpt, "--test_only", "true", "--model.inference", "tim",
                   "--model.inference_options", "{iterations: 20}", log_root=tmp_path))
    assert re.search(r"^test/acc \d+\.\d\d ± \d+\.\d\d", out, re.M)
