"""Few-shot prediction on a user's own image files (lightning_meta.predict), for every classification algorithm.

The images are PNG files the tests draw: glyphs in dark strokes on white, as a person draws them, classified by
models that read Omniglot's convention (bright strokes on black). Each model is first trained, by a plain loop
over episodes of other drawings of the same glyphs, until it separates the classes; then the command line and
``classify`` must give the probabilities of the model's own ``evaluate`` on tensors read here independently
(PIL, inverted by hand), and the true class of every query. MANN is the exception to the training: it learns to
bind labels in memory over thousands of batched steps (tests/test_mann.py trains it to above chance on easier
vectors), beyond this file's budget; its prediction is checked against the sequences built by hand instead.
"""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lightning_meta import (
    ANIL,
    MAML,
    MANN,
    Baseline,
    BaselinePlusPlus,
    MatchingNetwork,
    MetaLSTM,
    MetaNet,
    MetaSGD,
    ProtoNet,
    R2D2,
    RelationNetwork,
    Reptile,
    Siamese,
    SimpleShot,
)
from lightning_meta.data import LabelledBatch
from lightning_meta.algorithms.mann import EpisodeSequence
from lightning_meta.algorithms.transductive import bd_cspn
from lightning_meta.episode import Episode
from lightning_meta.predict import classify, main

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 28, 28)
GLYPHS = {  # class name -> strokes on a 56 x 56 canvas
    "bar": [(8, 28, 48, 28)],
    "pole": [(28, 8, 28, 48)],
    "slash": [(10, 46, 46, 10)],
    "vee": [(10, 10, 28, 46), (28, 46, 46, 10)],
}
OMNIGLOT_LIKE = {"task": "classification", "image_shape": list(SHAPE), "bright_on_dark": True, "mean": None,
                 "std": None, "eval_transform": None}  # fmt: skip


def drawing(strokes: list[tuple[int, int, int, int]], rng: np.random.Generator) -> Image.Image:
    """A dark-on-white drawing of ``strokes``, shifted and with jittered ends, 56 x 56 grey."""
    image = Image.new("L", (56, 56), 255)
    draw = ImageDraw.Draw(image)
    dx, dy = rng.integers(-4, 5, size=2)
    for x0, y0, x1, y1 in strokes:
        jitter = rng.integers(-3, 4, size=4)
        draw.line([(x0 + dx + jitter[0], y0 + dy + jitter[1]), (x1 + dx + jitter[2], y1 + dy + jitter[3])],
                  fill=0, width=int(rng.integers(4, 7)))
    return image


def as_model_input(image: Image.Image) -> torch.Tensor:
    """What a model trained on Omniglot reads, computed here without the library: 28 x 28 Lanczos, inverted, [0, 1]."""
    small = np.asarray(image.convert("L").resize((28, 28), Image.Resampling.LANCZOS), dtype=np.float32)
    return torch.from_numpy(255 - small)[None] / 255


def models() -> dict[str, torch.nn.Module]:
    n = len(GLYPHS)
    return {
        "protonet": ProtoNet(SHAPE, hidden=16),
        "protonet_timm": ProtoNet(SHAPE, backbone="timm:test_resnet"),
        "matching_fce": MatchingNetwork(SHAPE, fce=True, hidden=16),
        "relation": RelationNetwork(SHAPE, hidden=16, fc_hidden=8),
        "siamese": Siamese(SHAPE, hidden=16),
        "maml": MAML(SHAPE, n_way=n, hidden=16, inner_steps=1, inner_lr=0.4, lr=3e-3),
        "fomaml": MAML(SHAPE, n_way=n, hidden=16, inner_steps=1, inner_lr=0.4, first_order=True, lr=3e-3),
        "anil": ANIL(SHAPE, n_way=n, hidden=16, inner_steps=5, inner_lr=0.4, lr=3e-3),
        "anil_nil": ANIL(SHAPE, n_way=n, hidden=16, inner_steps=5, inner_lr=0.4, nil_testing=True, lr=3e-3),
        "metasgd": MetaSGD(SHAPE, n_way=n, hidden=16, inner_lr=0.4, lr=3e-3),
        "r2d2": R2D2(SHAPE, hidden=16, lr=3e-3),
        "reptile": Reptile(SHAPE, n_way=n, hidden=16, inner_lr=3e-3, inner_steps=5, inner_batch=4, eval_inner_steps=10,
                           eval_inner_batch=4, lr=0.5, lr_final=None),
        "meta_lstm": MetaLSTM(SHAPE, n_way=n, hidden=16, inner_steps=5, lr=3e-3),
        "metanet": MetaNet(SHAPE, n_way=n, hidden=16, blocks=2),
        "mann": MANN(SHAPE, n_way=n, controller=64, memory_rows=16, memory_width=16, heads=1, add_vector=True,
                     lr=3e-3),
        "baseline": Baseline(SHAPE, hidden=16, num_classes=n, lr=3e-3),
        "baseline_pp": BaselinePlusPlus(SHAPE, hidden=16, num_classes=n, lr=3e-3),
        "simpleshot": SimpleShot(SHAPE, hidden=16, num_classes=n, features="L2N", lr=3e-3),
    }  # fmt: skip


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """A support folder (one sub-folder per class, two drawings each) and a query folder (three drawings a
    class), PNG files; and the true class of each query file."""
    root = tmp_path_factory.mktemp("my_task")
    rng = np.random.default_rng(1)
    truth = {}
    for name, strokes in GLYPHS.items():
        (root / "support" / name).mkdir(parents=True)
        for k in range(2):
            drawing(strokes, rng).save(root / "support" / name / f"{k}.png")
        (root / "query").mkdir(exist_ok=True)
        for q in range(3):
            path = root / "query" / f"{name}_{q}.png"
            drawing(strokes, rng).save(path)
            truth[str(path)] = name
    return root / "support", root / "query", truth


@pytest.fixture(scope="module")
def drawings() -> torch.Tensor:
    """Model inputs of other drawings of the glyphs than the test's, [glyph, drawing, 1, 28, 28], to train on."""
    rng = np.random.default_rng(0)
    return torch.stack([torch.stack([as_model_input(drawing(strokes, rng)) for _ in range(24)])
                        for strokes in GLYPHS.values()])


def training_episode(pool: torch.Tensor, g: torch.Generator, k: int = 2, q: int = 2) -> Episode:
    """A task over the glyphs: ``k`` + ``q`` drawings of each, the glyphs in a random label order."""
    n = pool.shape[0]
    glyphs = torch.randperm(n, generator=g)  # label n is glyph glyphs[n]
    x = torch.stack([pool[c, torch.randperm(pool.shape[1], generator=g)[: k + q]] for c in glyphs])
    labels = torch.arange(n)[:, None]
    return Episode(x[:, :k].flatten(0, 1)[None], labels.expand(n, k).flatten()[None],
                   x[:, k:].flatten(0, 1)[None], labels.expand(n, q).flatten()[None], n)


def labelled_batch(pool: torch.Tensor, g: torch.Generator, size: int = 16) -> LabelledBatch:
    """``size`` drawings from ``pool`` at random, each labelled with its glyph (pretraining's batches)."""
    glyphs = torch.randint(pool.shape[0], (size,), generator=g)
    return LabelledBatch(pool[glyphs, torch.randint(pool.shape[1], (size,), generator=g)], glyphs)


def trained(model: torch.nn.Module, pool: torch.Tensor, check: Episode, max_steps: int = 3000) -> torch.nn.Module:
    """``model`` trained by its own meta_loss on tasks drawn from ``pool`` (or, for the pretraining family, on
    labelled batches of it) until it classifies ``check`` right."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    optimizer = model.configure_optimizers()
    for step in range(max_steps):
        if step % 20 == 0:
            model.eval()
            with torch.no_grad():
                if bool((model.evaluate(check).argmax(-1) == check.query_labels).all()):
                    return model
        model.train()
        batch = labelled_batch(pool, g) if model.trains_on == "labelled" else training_episode(pool, g)
        loss, _ = model.meta_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    raise AssertionError(f"{type(model).__name__} did not separate the glyphs in {max_steps} steps")


def save_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """The parts of a train.py checkpoint that prediction reads (test_train_py_checkpoint checks a real one)."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "OmniglotDataModule": {"preprocessing": OMNIGLOT_LIKE}}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def read_by_hand(support: Path, query: Path) -> tuple[Episode, list[str], list[Path]]:
    classes = sorted(p.name for p in support.iterdir())
    files = [(c, f) for c in classes for f in sorted((support / c).iterdir())]
    queries = sorted(query.iterdir())
    episode = Episode(torch.stack([as_model_input(Image.open(f)) for _, f in files])[None],
                      torch.tensor([classes.index(c) for c, _ in files])[None],
                      torch.stack([as_model_input(Image.open(f)) for f in queries])[None],
                      torch.zeros(1, len(queries), dtype=torch.long), len(classes))
    return episode, classes, queries


@pytest.mark.parametrize("name", list(models()))
def test_prediction_of_every_algorithm(name, task_files, drawings, tmp_path, capsys):
    support, query, truth = task_files
    episode, classes, queries = read_by_hand(support, query)
    true = torch.tensor([classes.index(truth[str(q)]) for q in queries])
    check = Episode(episode.support, episode.support_labels, episode.query, true[None], episode.n_way)
    model = models()[name] if name == "mann" else trained(models()[name], drawings, check)
    ckpt = save_checkpoint(model, tmp_path / "model.ckpt")

    assert main(["--ckpt_path", str(ckpt), "--support", str(support), "--query", str(query),
                 "--output", str(tmp_path / "out.json"), "--picture", str(tmp_path / "out.png")]) == 0
    printed = capsys.readouterr().out.splitlines()
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["classes"] == classes and [Path(r["query"]) for r in result["queries"]] == queries
    kind = result["kind"]
    from_file = torch.tensor([[r[f"{kind}:{c}"] for c in classes] for r in result["queries"]])
    with torch.no_grad():
        expected = model.probabilities(model.eval().evaluate(episode))[0]
    torch.testing.assert_close(from_file, expected, atol=2e-6, rtol=0)  # the file rounds to 6 decimals
    truth_or_own = expected.argmax(-1).tolist() if name == "mann" else [classes.index(truth[str(q)]) for q in queries]
    predicted = [classes[i] for i in truth_or_own]
    assert [r["predicted"] for r in result["queries"]] == predicted
    assert len(printed) == len(queries) and [line.split()[1] for line in printed] == predicted
    assert Image.open(tmp_path / "out.png").size[1] > 28 * len(classes)

    api = classify(ckpt, [f for c in classes for f in sorted((support / c).iterdir())],
                   [c for c in classes for _ in sorted((support / c).iterdir())], queries)
    torch.testing.assert_close(api.probabilities, expected, atol=1e-6, rtol=0)
    assert api.predicted == predicted


def test_prediction_with_transductive_inference(task_files, tmp_path):
    """``--inference bd_cspn`` on a ProtoNet checkpoint: the queries' scores are BD-CSPN's on the model's
    embeddings of the task read by hand."""
    support, query, _ = task_files
    episode, classes, queries = read_by_hand(support, query)
    torch.manual_seed(0)
    model = ProtoNet(SHAPE, hidden=16).eval()
    ckpt = untrained(model, tmp_path / "protonet.ckpt")
    assert main(["--ckpt_path", str(ckpt), "--support", str(support), "--query", str(query), "--inference", "bd_cspn",
                 "--output", str(tmp_path / "out.json")]) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    with torch.no_grad():
        z_support, z_query = (z.flatten(2) for z in model.embed(episode))
        expected = bd_cspn(z_support, episode.support_labels, z_query, len(classes)).softmax(-1)[0]
    from_file = torch.tensor([[r[f"probability:{c}"] for c in classes] for r in result["queries"]])
    torch.testing.assert_close(from_file, expected, atol=2e-6, rtol=0)


def test_mann_reads_the_support_sequence_then_each_query_alone(task_files):
    """MANN's ``predict``: each query is classified at the step after the whole support set, shown as a labelled
    sequence in the order drawn from the task's key, as if it were the only query: the same as ``forward`` on
    that sequence built by hand, one query at a time."""
    episode, classes, _ = read_by_hand(*task_files[:2])
    torch.manual_seed(0)
    model = models()["mann"].eval()
    with torch.no_grad():
        scores = model.predict(episode)[0]  # [NQ, N]
        NK = episode.support.shape[1]
        order = torch.randperm(NK, generator=episode.generator(0, "sequence"))
        for j in range(episode.query.shape[1]):
            x = torch.cat([episode.support[0, order], episode.query[0, j : j + 1]])[None]  # [1, NK + 1, 1, 28, 28]
            y = torch.cat([episode.support_labels[0, order], torch.tensor([0])])[None]
            by_hand = model(EpisodeSequence(x, y, torch.zeros_like(y), len(classes)))[0, -1]
            torch.testing.assert_close(scores[j], by_hand, atol=1e-5, rtol=1e-5)
        y_last = torch.cat([episode.support_labels[0, order], torch.tensor([1])])[None]  # the query's label unused
        unused = model(EpisodeSequence(x, y_last, torch.zeros_like(y_last), len(classes)))[0, -1]
        torch.testing.assert_close(unused, by_hand)


def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def untrained(model: torch.nn.Module, path: Path, preprocessing: dict = OMNIGLOT_LIKE) -> Path:
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "SinusoidDataModule" if preprocessing["task"] == "regression" else "OmniglotDataModule":
                  {"preprocessing": preprocessing}}  # fmt: skip
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def bad_inputs(task_files, tmp_path_factory) -> dict[str, list[str]]:
    """Calls of the command line that must fail, each with what its one line must say."""
    support, query, _ = task_files
    root = tmp_path_factory.mktemp("bad")
    protonet = untrained(ProtoNet(SHAPE, hidden=8), root / "protonet.ckpt")
    (root / "empty_class" / "bar").mkdir(parents=True)
    (root / "empty_class" / "pole").mkdir()
    Image.new("L", (28, 28)).save(root / "empty_class" / "pole" / "0.png")
    (root / "broken" / "bar").mkdir(parents=True)
    (root / "broken" / "pole").mkdir()
    (root / "broken" / "bar" / "0.png").write_bytes(b"not a png")
    Image.new("L", (28, 28)).save(root / "broken" / "pole" / "0.png")
    (root / "unequal" / "bar").mkdir(parents=True)
    (root / "unequal" / "pole").mkdir()
    for k in range(2):
        Image.new("L", (28, 28)).save(root / "unequal" / "bar" / f"{k}.png")
    Image.new("L", (28, 28)).save(root / "unequal" / "pole" / "0.png")
    (root / "no_images").mkdir()
    (root / "existing.csv").write_text("mine\n")
    regression = {**OMNIGLOT_LIKE, "task": "regression", "image_shape": [1]}
    sinusoid = untrained(MAML((1,), n_way=0, backbone="mlp", hidden=8), root / "sinusoid.ckpt", regression)
    no_record = root / "old.ckpt"
    torch.save({k: v for k, v in torch.load(protonet, weights_only=True).items() if k != "OmniglotDataModule"},
               no_record)
    maml = untrained(MAML(SHAPE, n_way=3, hidden=8), root / "maml.ckpt")
    relation = untrained(RelationNetwork(SHAPE, hidden=8), root / "relation.ckpt")
    (root / "truncated.ckpt").write_bytes(protonet.read_bytes()[:1000])
    s, q = str(support), str(query)
    return {
        "class folder .*bar holds no images": ["--ckpt_path", str(protonet), "--support", str(root / "empty_class"),
                                               "--query", q],
        r"cannot read image .*0\.png": ["--ckpt_path", str(protonet), "--support", str(root / "broken"), "--query", q],
        r"output layer has 3 units.* exactly 3 classes \(got 4\)": ["--ckpt_path", str(maml), "--support", s,
                                                                    "--query", q],
        r"same number .*\[2, 1\]": ["--ckpt_path", str(relation), "--support", str(root / "unequal"), "--query", q],
        "regression model": ["--ckpt_path", str(sinusoid), "--support", s, "--query", q],
        r"--inference tim: checkpoint .*relation\.ckpt is a relation model": ["--ckpt_path", str(relation), "--support",
                                                                          s, "--query", q, "--inference", "tim"],
        "no preprocessing record": ["--ckpt_path", str(no_record), "--support", s, "--query", q],
        r"checkpoint .*missing\.ckpt does not exist": ["--ckpt_path", str(root / "missing.ckpt"), "--support", s,
                                                      "--query", q],
        "cannot be read .*truncated": ["--ckpt_path", str(root / "truncated.ckpt"), "--support", s, "--query", q],
        r"support folder .*nowhere does not exist": ["--ckpt_path", str(protonet), "--support", str(root / "nowhere"),
                                                     "--query", q],
        "has no class folders": ["--ckpt_path", str(protonet), "--support", str(root / "no_images"), "--query", q],
        r"query .*gone\.png does not exist": ["--ckpt_path", str(protonet), "--support", s, "--query",
                                              str(root / "gone.png")],
        r"query folder .*no_images holds no images": ["--ckpt_path", str(protonet), "--support", s, "--query",
                                                      str(root / "no_images")],
        "existing.csv exists already": ["--ckpt_path", str(protonet), "--support", s, "--query", q, "--output",
                                        str(root / "existing.csv")],
        r"must end in \.png": ["--ckpt_path", str(protonet), "--support", s, "--query", q, "--picture",
                               str(root / "grid.jpg")],
    }  # fmt: skip


def test_bad_input_is_one_line_and_changes_nothing(bad_inputs, task_files, capsys):
    support = task_files[0]
    for pattern, args in bad_inputs.items():
        folders = [support.parent, Path(args[1]).parent]
        before = [snapshot(f) for f in folders]
        assert main(args) == 2, pattern
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert captured.out == "" and len(lines) == 1 and lines[0].startswith("error: "), (pattern, captured)
        assert re.search(pattern, lines[0]), (pattern, lines[0])
        assert [snapshot(f) for f in folders] == before, pattern


def test_train_py_checkpoint_predicts_through_the_command_line(data_root, task_files, tmp_path):
    """A real run of train.py on Omniglot stores its preprocessing (28 x 28 grey, strokes bright on black), and
    ``train.py predict`` reads it back: the dark-on-white drawings are inverted as the model's own inputs were."""
    support, query, _ = task_files
    run = [sys.executable, str(ROOT / "train.py")]
    tiny = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--data.n_way", "5",
            "--data.batches_per_epoch", "2", "--data.val_episodes", "10", "--data.test_episodes", "10"]
    env = {**os.environ, "LIGHTNING_META_DATA": str(data_root)}
    subprocess.run([*run, "--config", "proto.yaml", "--trainer.max_steps", "2", *tiny, "--log_root",
                    str(tmp_path / "logs")], env=env, check=True, capture_output=True)
    ckpt = next((tmp_path / "logs" / "proto" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    stored = torch.load(ckpt, weights_only=True)["OmniglotDataModule"]["preprocessing"]
    assert stored == {**OMNIGLOT_LIKE, "image_shape": [1, 28, 28]}
    out = tmp_path / "out.csv"
    result = subprocess.run([*run, "predict", "--ckpt_path", str(ckpt), "--support", str(support), "--query",
                             str(query), "--output", str(out)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    episode, classes, queries = read_by_hand(support, query)
    model = ProtoNet.load_from_checkpoint(ckpt, weights_only=True)
    with torch.no_grad():
        expected = model.probabilities(model.eval().evaluate(episode))[0]
    from_file = torch.tensor([[float(r[f"probability:{c}"]) for c in classes] for r in rows])
    torch.testing.assert_close(from_file, expected, atol=2e-6, rtol=0)
    assert [Path(r["query"]) for r in rows] == queries

    missing = subprocess.run([*run, "predict", "--ckpt_path", str(tmp_path / "none.ckpt"), "--support", str(support),
                              "--query", str(query)], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr


def test_the_readme_example_runs(task_files, tmp_path, monkeypatch, capsys):
    """The README's Python example, run as written in a folder laid out as it says (JPEG images, a checkpoint)."""
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S)[1]
    support, query, truth = task_files
    for folder in (support, query):
        for path in folder.rglob("*.png"):
            target = tmp_path / "my_task" / folder.name / path.relative_to(folder).with_suffix(".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(path).convert("RGB").save(target)
    checkpoints = tmp_path / "lightning_logs" / "proto" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    untrained(ProtoNet(SHAPE, hidden=8), checkpoints / "best-0-20.00.ckpt")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == sorted(Path(q).with_suffix(".jpg").name for q in truth)
    assert all(line.split()[1] in GLYPHS and 0 < float(line.split()[2]) <= 1 for line in printed)
