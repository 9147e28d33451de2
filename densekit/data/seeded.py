"""Training samples whose random draws do not depend on DataLoader workers.

Augmentations and random windows draw from torch's generator. In the main process that
generator's state is kept in checkpoints (:mod:`densekit.tasks.random_state`), but DataLoader
workers have generators of their own, seeded when they start and, with persistent workers,
carried from epoch to epoch: a fit resumed from a checkpoint started fresh workers and drew
other augmentations than the uninterrupted fit. Here the sampler, which always runs in the main
process, hands each sample a seed with its index (:class:`SeededSampler`), and the dataset draws
that sample's randomness from a generator seeded with it (:class:`SeededDataset`). A sample's
draws then depend only on the main process's generator: the same for any ``num_workers``, and
the same in a resumed fit as in an uninterrupted one.

Single-process training only: with several processes (DDP) Lightning's distributed sampler
shuffles with the seed and the epoch, identical on every rank, and the data module uses it
(a seed drawn on each rank from its own generator could differ between ranks).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset, Sampler


class SeededIndex(NamedTuple):
    """A dataset item (its index) and the seed of that sample's random draws."""

    item: int
    seed: int


class SeededSampler(Sampler[SeededIndex]):
    """``sampler``'s indices, each with a seed: one draw from the main process's torch
    generator per epoch, plus the sample's position in the epoch."""

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[SeededIndex]:
        base = int(torch.randint(0, 2**62, ()))
        for position, index in enumerate(self.sampler):
            yield SeededIndex(int(index), base + position)

    def __len__(self) -> int:
        if not isinstance(self.sampler, Sized):
            raise TypeError(f"{type(self.sampler).__name__} has no length")
        return len(self.sampler)


class SeededDataset(Dataset):
    """``dataset[index]`` drawn with torch's generator seeded by the sample's seed (the
    caller's generator state is kept as it was)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __getitem__(self, item: SeededIndex | int) -> Any:
        if not isinstance(item, SeededIndex):  # indexed directly, not by the sampler: no seed
            return self.dataset[item]
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)
