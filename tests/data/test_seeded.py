"""Training samples seeded by the main process: the same draws with or without DataLoader
workers, different draws for different samples and epochs, the caller's generator untouched."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, RandomSampler

from densekit.data.seeded import SeededDataset, SeededIndex, SeededSampler


class Noisy(torch.utils.data.Dataset):
    """Item ``i``: ``i`` plus a draw from torch's generator (an augmentation stands in)."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i)]) + torch.rand(1)


def epochs(workers: int, n: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(0)
    dataset = Noisy()
    loader = DataLoader(
        SeededDataset(dataset),
        batch_size=3,
        sampler=SeededSampler(RandomSampler(dataset)),
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    return [torch.cat(list(loader)) for _ in range(n)]


def test_workers_draw_what_the_main_process_draws():
    alone, with_workers = epochs(0), epochs(2)
    for a, b in zip(alone, with_workers, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    first, second = alone
    assert not torch.equal(first, second)  # other order and draws in the next epoch
    assert torch.equal(torch.sort(first.floor().flatten()).values, torch.arange(6.0))


def test_the_callers_generator_is_untouched_and_direct_indexing_works():
    dataset = SeededDataset(Noisy())
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = dataset[SeededIndex(2, 123)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, dataset[SeededIndex(2, 123)])  # same seed, same draw
    assert not torch.equal(a, dataset[SeededIndex(2, 124)])
    assert 2 <= float(dataset[2]) < 3  # an index without a seed: the caller's generator
