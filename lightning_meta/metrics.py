"""Few-shot evaluation: mean query accuracy over episodes with its 95% confidence interval."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def episode_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Query accuracy of each episode: logits [T, M, N], labels [T, M] -> [T] in [0, 1]."""
    return (logits.argmax(-1) == labels).float().mean(-1)


class EpisodeAccuracy(Metric):
    """Mean of per-episode accuracies and its 95% confidence interval 1.96 * s / sqrt(n), both in percent
    (s is the sample standard deviation). States are sums, so the result is exact across DDP ranks."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("total", "total_sq", "count"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, accuracies: Tensor) -> None:
        a = accuracies.detach().to(torch.float64)
        self.total += a.sum()
        self.total_sq += a.square().sum()
        self.count += a.numel()

    def compute(self) -> tuple[Tensor, Tensor]:
        mean = self.total / self.count
        var = (self.total_sq - self.count * mean.square()).clamp_min(0) / (self.count - 1).clamp_min(1)
        return 100 * mean, 100 * 1.96 * var.sqrt() / self.count.sqrt()
