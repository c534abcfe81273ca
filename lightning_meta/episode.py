"""The one episode type every algorithm consumes.

An episode (a few-shot task) has a labelled support set and a query set to be scored. Episodes come
task-batched: every tensor has a leading task dimension T. Labels are 0..N-1 within an episode and the
examples of a set are grouped by class (support index ``n * K + k`` has label ``n``); algorithms must not
rely on that order, it only makes episodes easy to read. Images travel as uint8 from the data loader to
the device and become floats in the DataModule's ``on_after_batch_transfer``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Episode:
    support: Tensor  # [T, N*K, *x]    images [C, H, W] or feature vectors
    support_labels: Tensor  # [T, N*K] class labels 0..N-1 (or [T, K, 1] real targets for regression)
    query: Tensor  # [T, N*Q, *x]
    query_labels: Tensor  # [T, N*Q]
    n_way: int  # N (0 for regression)

    def tasks(self) -> list[Episode]:
        """The task batch as single-task episodes (leading dimension 1); ``collate_episodes`` is the inverse."""
        return [Episode(self.support[t : t + 1], self.support_labels[t : t + 1], self.query[t : t + 1],
                        self.query_labels[t : t + 1], self.n_way) for t in range(self.support.shape[0])]


def collate_episodes(episodes: list[Episode]) -> Episode:
    """Stacks single-task episodes (leading dimension 1) into one task batch."""
    n_way = episodes[0].n_way
    if any(e.n_way != n_way for e in episodes):
        raise ValueError("cannot batch episodes with different numbers of ways")
    return Episode(
        support=torch.cat([e.support for e in episodes]),
        support_labels=torch.cat([e.support_labels for e in episodes]),
        query=torch.cat([e.query for e in episodes]),
        query_labels=torch.cat([e.query_labels for e in episodes]),
        n_way=n_way,
    )
