"""The one episode type every algorithm consumes.

An episode (a few-shot task) has a labelled support set and a query set to be scored. Episodes come
task-batched: every tensor has a leading task dimension T. Labels are 0..N-1 within an episode and the
examples of a set are grouped by class (support index ``n * K + k`` has label ``n``); algorithms must not
rely on that order, it only makes episodes easy to read. Images travel as uint8 from the data loader to
the device and become floats in the DataModule's ``on_after_batch_transfer``.

Every task carries a key, the seed its sampler drew it from. An algorithm that makes random choices for a task
(Reptile's mini-batches, the order of MANN's sequence) draws them from ``Episode.generator``, which depends on the
key alone: a task is treated the same in any batch, on any rank, with any number of processes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor


def episode_seed(seed: int, name: str, index: int) -> int:
    """A well-mixed 63-bit seed for ``(seed, name, index)``, identical on every machine and Python version."""
    digest = hashlib.blake2b(f"{seed}/{name}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class Episode:
    support: Tensor  # [T, N*K, *x]    images [C, H, W] or feature vectors
    support_labels: Tensor  # [T, N*K] class labels 0..N-1 (or [T, K, 1] real targets for regression)
    query: Tensor  # [T, N*Q, *x]
    query_labels: Tensor  # [T, N*Q]
    n_way: int  # N (0 for regression)
    keys: Tensor | None = None  # [T] int64 on the CPU, each task's key (None, for episodes built by hand: 0 .. T-1)

    def tasks(self) -> list[Episode]:
        """The task batch as single-task episodes (leading dimension 1); ``collate_episodes`` is the inverse."""
        return [Episode(self.support[t : t + 1], self.support_labels[t : t + 1], self.query[t : t + 1],
                        self.query_labels[t : t + 1], self.n_way, None if self.keys is None else self.keys[t : t + 1])
                for t in range(self.support.shape[0])]

    def generator(self, t: int, purpose: str) -> torch.Generator:
        """A CPU random generator for task ``t`` that depends only on the task's key and on ``purpose`` (one
        stream per kind of choice, independent of the sampler's own)."""
        key = t if self.keys is None else int(self.keys[t])
        return torch.Generator().manual_seed(episode_seed(key, purpose, 0))


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
        keys=None if any(e.keys is None for e in episodes) else torch.cat([e.keys for e in episodes]),
    )
