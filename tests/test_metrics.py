import statistics

import torch

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
