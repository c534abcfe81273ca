"""The episode sampler: which classes and items make up an episode is a pure function of its key.

Episode ``i`` of a split depends on ``(seed, split, i)`` and nothing else. Training episodes are numbered
from the start of training and never repeat: training batch ``b`` holds episodes ``b*T*W ... (b+1)*T*W - 1``
(``T`` tasks per batch, ``W`` ranks), and rank ``r`` takes ``i = r, r + W, r + 2W, ...`` of them. So one
process with a meta-batch of ``T * W`` tasks draws exactly the tasks that ``W`` ranks with ``T`` each draw
together, resuming needs nothing but the number of batches already trained, and validation and test
episodes (``0 .. n-1`` of their split) are the same for every run and every algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from lightning_meta.data.augment import is_batched
from lightning_meta.data.store import ClassStore
from lightning_meta.episode import Episode, episode_seed
from lightning_meta.errors import DataError


def transformed(images: Tensor, transform: Callable[[Tensor], Tensor], batched: bool, seed: int) -> Tensor:
    """``transform`` of each image of ``images`` [M, *x] under the random seed ``seed``, which makes augmentation as
    reproducible as the images drawn: one call for all images where ``batched`` (each image still gets its own
    random parameters), else one call per image."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if batched:
            return transform(images)
        return torch.stack([transform(image) for image in images])


class EpisodeSampler(Dataset[Episode]):
    """N-way K-shot episodes with Q queries per class from a class store; a map-style dataset whose keys are
    episode indices (every non-negative integer is an episode).

    With ``within_group`` every episode takes its N classes from one group (one Omniglot alphabet, the
    protocol of Lake et al.). ``transform``, if given, is applied to each uint8 image with the random
    state seeded from the episode key, so augmentation is as reproducible as the episode itself; a batched
    transform (``lightning_meta.data.augment``) gets all the images of the episode in one call.
    """

    def __init__(
        self,
        store: ClassStore,
        split: str,
        n_way: int,
        k_shot: int,
        n_query: int,
        seed: int = 0,
        within_group: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if n_way < 2 or k_shot < 1 or n_query < 1:
            raise DataError(f"{split}: need n_way >= 2, k_shot >= 1 and n_query >= 1 "
                            f"(got {n_way}, {k_shot}, {n_query})")
        if k_shot + n_query > store.items_per_class:
            raise DataError(
                f"{split}: k_shot + n_query = {k_shot + n_query} but the smallest class has only "
                f"{store.items_per_class} items; lower k_shot or n_query so that they add up to at most "
                f"{store.items_per_class}"
            )
        self.store, self.split, self.seed = store, split, seed
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.transform, self.batched = transform, is_batched(transform)
        self.group_members: list[Tensor] | None = None
        if within_group:
            members = [torch.nonzero(store.groups == g).flatten() for g in range(len(store.group_names))]
            self.group_members = [m for m in members if len(m) >= n_way]
            if not self.group_members:
                raise DataError(f"{split}: no group has {n_way} classes for within-group episodes; lower n_way")
        elif n_way > store.num_classes:
            raise DataError(f"{split}: n_way = {n_way} but the split has only {store.num_classes} classes; lower n_way")

    def key(self, index: int) -> int:
        """The seed episode ``index`` is drawn from; its tasks carry it as ``Episode.keys``."""
        return episode_seed(self.seed, self.split, index)

    def indices(self, index: int) -> tuple[Tensor, Tensor]:
        """The classes [N] and, per class, the items [N, K+Q] of episode ``index``."""
        g = torch.Generator().manual_seed(self.key(index))
        if self.group_members is None:
            classes = torch.randperm(self.store.num_classes, generator=g)[: self.n_way]
        else:
            members = self.group_members[int(torch.randint(len(self.group_members), (1,), generator=g))]
            classes = members[torch.randperm(len(members), generator=g)[: self.n_way]]
        slots = self.store.images.shape[1]
        keys = torch.rand(self.n_way, slots, generator=g)  # a random order of each class's items
        if self.store.counts is not None:  # padding slots go last, never drawn
            keys = keys.masked_fill(torch.arange(slots) >= self.store.counts[classes, None], 2.0)
        return classes, keys.argsort(dim=1)[:, : self.k_shot + self.n_query]

    def __getitem__(self, index: int) -> Episode:
        classes, items = self.indices(index)
        x = self.store.images[classes[:, None], items]  # [N, K+Q, *x]
        if self.transform is not None:
            seed = episode_seed(self.seed, self.split + "/transform", index)
            x = transformed(x.flatten(0, 1), self.transform, self.batched, seed).unflatten(0, x.shape[:2])
        n, k, q = self.n_way, self.k_shot, self.n_query
        labels = torch.arange(n)
        return Episode(
            support=x[:, :k].reshape(1, n * k, *x.shape[2:]),
            support_labels=labels.repeat_interleave(k)[None],
            query=x[:, k:].reshape(1, n * q, *x.shape[2:]),
            query_labels=labels.repeat_interleave(q)[None],
            n_way=n,
            keys=torch.tensor([self.key(index)]),
        )


class EpisodeSchedule(DistributedSampler):
    """The episode indices one rank draws in one pass (one epoch) of a data loader.

    Evaluation schedules (``trained_batches`` None) always yield ``rank, rank + W, ...`` below
    ``num_episodes``. Training schedules continue where training stands: ``trained_batches()`` says how many
    batches were trained so far, and the pass runs to the end of the current epoch of
    ``num_episodes / (batch_size * W)`` batches. It is a ``DistributedSampler`` so that Lightning keeps it
    under DDP rather than wrapping it in one.
    """

    def __init__(
        self,
        num_episodes: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        trained_batches: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(range(num_episodes), num_replicas=world_size, rank=rank, shuffle=False)
        self.num_episodes, self.batch_size, self.trained_batches = num_episodes, batch_size, trained_batches

    def __iter__(self) -> Iterator[int]:
        if self.trained_batches is None:
            return iter(range(self.rank, self.num_episodes, self.num_replicas))
        per_batch = self.batch_size * self.num_replicas
        batches_per_epoch = self.num_episodes // per_batch
        done = self.trained_batches()
        begin, end = done * per_batch, (done + batches_per_epoch - done % batches_per_epoch) * per_batch
        return iter(range(begin + self.rank, end, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_episodes, self.num_replicas))
