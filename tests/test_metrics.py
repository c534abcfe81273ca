import statistics

import torch

from lightning_meta.metrics import EpisodeAccuracy, episode_accuracy


def test_episode_accuracy_by_hand():
    logits = torch.tensor([[[2.0, 1.0], [0.0, 3.0], [5.0, 4.0]], [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert torch.allclose(episode_accuracy(logits, labels), torch.tensor([2 / 3, 2 / 3]))


def test_mean_and_confidence_interval_match_the_textbook_formula():
    accuracies = [0.8, 0.6, 1.0, 0.9, 0.7, 0.95, 0.85]
    metric = EpisodeAccuracy()
    metric.update(torch.tensor(accuracies[:3]))
    metric.update(torch.tensor(accuracies[3:]))
    mean, ci95 = metric.compute()
    expected_ci = 1.96 * statistics.stdev(accuracies) / len(accuracies) ** 0.5
    assert abs(mean.item() - 100 * statistics.mean(accuracies)) < 1e-5
    assert abs(ci95.item() - 100 * expected_ci) < 1e-5
