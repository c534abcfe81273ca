import statistics

import pytest
import pytorch_lightning as pl
import torch

from lightning_meta import MAML, Episode, ProtoNet, SinusoidDataModule
from lightning_meta.metrics import EpisodeMean, episode_accuracy, episode_mse


def test_episode_accuracy_by_hand():
    logits = torch.tensor([[[2.0, 1.0], [0.0, 3.0], [5.0, 4.0]], [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert torch.allclose(episode_accuracy(logits, labels), torch.tensor([200 / 3, 200 / 3]))


def test_episode_mse_by_hand():
    predictions = torch.tensor([[[1.0], [2.0]], [[0.0], [0.0]]])
    targets = torch.tensor([[[0.0], [0.0]], [[3.0], [-1.0]]])
    assert torch.allclose(episode_mse(predictions, targets), torch.tensor([2.5, 5.0]))


def test_mean_and_confidence_interval_match_the_textbook_formula():
    scores = [80, 60, 100, 90, 70, 95, 85]
    metric = EpisodeMean()
    metric.update(torch.tensor(scores[:3]))
    metric.update(torch.tensor(scores[3:]))
    mean, ci95 = metric.compute()
    assert abs(mean.item() - statistics.mean(scores)) < 1e-9
    assert abs(ci95.item() - 1.96 * statistics.stdev(scores) / len(scores) ** 0.5) < 1e-9


def test_the_primary_score_is_named_by_the_data_at_setup_and_scoring_sets_nothing():
    """``metric_name`` is "acc" for a model used without a trainer and the one of the data's task once a trainer sets
    the model up; ``score`` computes whatever its episode calls for and leaves the name alone."""
    classification = Episode(torch.zeros(1, 2, 3), torch.tensor([[0, 1]]), torch.zeros(1, 2, 3), torch.tensor([[0, 1]]),
                             n_way=2)
    regression = Episode(torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), torch.ones(1, 2, 1), n_way=0)
    model = ProtoNet((3,), backbone="mlp", hidden=4)
    assert model.metric_name == "acc"
    assert model.score(torch.zeros(1, 2, 1), regression).tolist() == [1.0]
    assert model.metric_name == "acc"

    model = MAML((1,), n_way=0, backbone="mlp", hidden=4, eval_inner_steps=0)
    data = SinusoidDataModule(eval_n_query=5, eval_tasks_per_batch=2, test_episodes=4)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    assert set(trainer.test(model, data, verbose=False)[0]) == {"test/mse", "test/mse_ci95"}
    assert model.metric_name == "mse"
    assert model.score(torch.tensor([[[9.0, 0.0], [0.0, 9.0]]]), classification).tolist() == [100.0]
    assert model.metric_name == "mse"


def test_an_algorithms_further_scores_are_averaged_and_logged_beside_the_primary_one():
    """``episode_scores``: a ProtoNet that also reports the error rate logs test/error = 100 − test/acc with the same
    confidence interval, and only test/acc in the progress bar."""

    class WithError(ProtoNet):
        def episode_scores(self, episode, outputs):
            scores = super().episode_scores(episode, outputs)
            return scores | {"error": 100 - scores["acc"]}

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    def examples(labels):  # the class's corner of the cube, in noise that makes some queries hard
        return 3 * torch.eye(3)[labels] + torch.randn(*labels.shape, 3, generator=g)

    support, query = torch.arange(3).repeat(4, 2), torch.arange(3).repeat(4, 3)
    batches = [Episode(examples(support), support, examples(query), query, n_way=3) for _ in range(2)]
    model = WithError((3,), backbone="mlp", hidden=4)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.test(model, torch.utils.data.DataLoader(batches, batch_size=None), verbose=False)[0]
    assert set(logged) == {"test/acc", "test/acc_ci95", "test/error", "test/error_ci95"}
    assert logged["test/error"] == pytest.approx(100 - logged["test/acc"], abs=1e-4)
    assert logged["test/error_ci95"] == pytest.approx(logged["test/acc_ci95"], abs=1e-4) and logged["test/acc_ci95"] > 0
    assert set(trainer.progress_bar_metrics) == {"test/acc"}
