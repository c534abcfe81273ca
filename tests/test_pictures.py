"""TensorBoard pictures of the closing test: drawn right, and written (read back from the event files)."""

import csv
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import TINY

from lightning_meta import ALGORITHMS, cli
from lightning_meta.algorithms.base import EmbeddingPictures, InnerStepPictures, InstancePictures
from lightning_meta.episode import Episode
from lightning_meta.pictures import CAPTION, FRAME, GREEN, GREY, RED, episode_image, inner_step_points


def test_episode_image_shows_support_by_class_and_frames_queries_by_correctness():
    """2-way 1-shot, 2 queries per class of 4x4 images; the model calls query 1 (class 0) class 1."""
    support = torch.arange(2 * 16, dtype=torch.float).view(1, 2, 1, 4, 4)
    query = torch.rand(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    episode = Episode(support, torch.tensor([[0, 1]]), query, torch.tensor([[0, 0, 1, 1]]), 2)
    image = episode_image(episode, torch.tensor([[0, 1, 1, 1]]))
    cell_w, cell_h = 4 + 2 * FRAME, 4 + 2 * FRAME + CAPTION
    gap = cell_w // 2
    assert image.shape == (3, 2 * cell_h, 3 * cell_w + gap) and image.dtype == torch.uint8

    def frame(row: int, column: int, query: bool) -> tuple[int, ...]:
        left = column * cell_w + (gap if query else 0)
        return tuple(image[:, row * cell_h, left].tolist())

    def picture(row: int, column: int, query: bool) -> torch.Tensor:
        left = column * cell_w + (gap if query else 0) + FRAME
        return image[0, row * cell_h + FRAME: row * cell_h + FRAME + 4, left: left + 4]

    assert frame(0, 0, False) == frame(1, 0, False) == GREY
    assert frame(0, 1, True) == GREEN and frame(0, 2, True) == RED  # class 0: right, then wrong
    assert frame(1, 1, True) == frame(1, 2, True) == GREEN
    stretched = ((support[0, 1, 0] - 16) / 15 * 255).round()  # support of class 1 stretched to 0..255
    assert torch.equal(picture(1, 0, False).float(), stretched)
    q = query[0, 3, 0]
    assert torch.equal(picture(1, 2, True).float(), ((q - q.min()) / (q.max() - q.min()) * 255).round())


def test_the_pictures_of_an_algorithm_are_those_it_declares():
    """Each picture beyond the episode is drawn for the algorithms that declare its interface, not for any module
    that happens to have a method of that name."""
    declaring = {kind: sorted(name for name, cls in ALGORITHMS.items() if issubclass(cls, kind))
                 for kind in (EmbeddingPictures, InnerStepPictures, InstancePictures)}
    assert declaring == {EmbeddingPictures: ["baseline", "baseline_pp", "matching", "protonet", "r2d2", "relation",
                                             "siamese", "simpleshot"],
                         InnerStepPictures: ["anil", "maml", "metasgd", "reptile"], InstancePictures: ["mann"]}
    assert ALGORITHMS["mann"].instances == (1, 2, 3, 5, 10)  # Santoro et al.'s table


def test_inner_step_points():
    assert inner_step_points(1) == [0, 1]
    assert inner_step_points(10) == [0, 1, 2, 4, 8, 10]
    assert inner_step_points(50) == [0, 1, 2, 4, 8, 16, 32, 50]


def run(config: str, tmp_path: Path, *args: str) -> Path:
    cli.main(["--config", config, "--data", "SyntheticDataModule", "--trainer.max_steps", "2",
              "--data.batches_per_epoch", "2", "--data.val_episodes", "2", "--data.test_episodes", "4",
              "--data.eval_tasks_per_batch", "2", "--data.tasks_per_batch", "2", *args,
              "--log_root", str(tmp_path), *TINY])
    return tmp_path / config.removesuffix(".yaml") / "version_0"


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.parametrize("config", ["proto.yaml", "relation.yaml"])
def test_a_metric_learner_writes_the_episode_the_projector_and_the_hyperparameters(config, tmp_path):
    run_dir = run(config, tmp_path, "--data.eval_n_way", "3", "--data.eval_n_query", "4")
    written = events(run_dir)
    image = written.Images("test/episode")[-1]
    cell_w, cell_h = 28 + 2 * FRAME, 28 + 2 * FRAME + CAPTION
    assert (image.height, image.width) == (3 * cell_h, (1 + 4) * cell_w + cell_w // 2)  # 3 rows, 1 shot + 4 queries
    projector = next(run_dir.glob("*/test*embeddings"))  # <step>/test%2Fembeddings
    rows = list(csv.reader((projector / "tensors.tsv").open(), delimiter="\t"))
    metadata = list(csv.reader((projector / "metadata.tsv").open(), delimiter="\t"))
    assert len(rows) == 3 + 3 + 12  # support, prototypes, queries
    assert metadata[0] == ["kind", "class"]
    assert [m[0] for m in metadata[1:]] == ["support"] * 3 + ["prototype"] * 3 + ["query"] * 12
    support, prototypes = (torch.tensor([[float(v) for v in row] for row in rows[i:i + 3]]) for i in (0, 3))
    assert torch.allclose(prototypes, support, rtol=1e-5)  # 1 shot: a prototype is its class's support embedding
    assert (projector / "sprite.png").exists()
    hparams = written.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert b"hparam/test/acc" in hparams["_hparams_/experiment"] and b"lr" in hparams["_hparams_/session_start_info"]


def test_maml_writes_accuracy_by_inner_step(tmp_path):
    run_dir = run("maml.yaml", tmp_path, "--model.eval_inner_steps", "3")
    curve = events(run_dir).Scalars("test/acc_by_inner_step")
    assert [point.step for point in curve] == [0, 1, 2, 3]
    assert all(0 <= point.value <= 100 for point in curve)


def test_mann_writes_accuracy_by_instance(tmp_path):
    run_dir = run("mann.yaml", tmp_path)
    written = events(run_dir)
    curve = written.Scalars("test/acc_by_instance")
    assert [point.step for point in curve] == [1, 2, 3, 5, 10]
    for point in curve:
        assert point.value == pytest.approx(written.Scalars(f"test/acc_instance_{point.step}")[-1].value)
    assert "test/episode" not in written.Tags()["images"]  # MANN's inputs are flattened vectors
