"""Few-shot evaluation: the mean of a per-episode score over episodes, with its 95% confidence interval."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def episode_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Query accuracy of each episode in percent: logits [T, M, N], labels [T, M] -> [T]."""
    return 100 * (logits.argmax(-1) == labels).float().mean(-1)


def episode_mse(predictions: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error of each regression episode: predictions and targets [T, M, 1] -> [T]."""
    return (predictions - targets).pow(2).flatten(1).mean(-1)


class EpisodeMean(Metric):
    """Mean of per-episode scores and its 95% confidence interval 1.96 * s / sqrt(n), where s is the sample
    standard deviation. States are sums, so the result is exact across DDP ranks."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("total", "total_sq", "count"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: Tensor) -> None:
        a = scores.detach().to(torch.float64)
        self.total += a.sum()
        self.total_sq += a.square().sum()
        self.count += a.numel()

    def compute(self) -> tuple[Tensor, Tensor]:
        mean = self.total / self.count
        var = (self.total_sq - self.count * mean.square()).clamp_min(0) / (self.count - 1).clamp_min(1)
        return mean, 1.96 * var.sqrt() / self.count.sqrt()
