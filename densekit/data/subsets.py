"""Labelled subsets of a training split: nested, reproducible by seed, optionally stratified.

A subset is a prefix of one seeded order of the training items (windows or files), so for one
seed the 1 % subset lies inside the 10 % subset, which lies inside the whole split, and the same
seed always gives the same items. With ``stratify``, the order first takes, for each class from
the rarest to the most common, the earliest item (in the seeded order) holding that class, so
the smallest subsets still contain every class a training item holds (as far as the subset has
room for one item per class); the rest follows the seeded order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from densekit.errors import DensekitError


def nested_order(n: int, seed: int, classes: Sequence[set[int]] | None = None) -> list[int]:
    """An order of ``range(n)`` whose prefixes are the nested subsets of ``seed``.

    ``classes``: the classes each item holds, for the stratified order (None: plain shuffle).
    """
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=generator).tolist()
    if classes is None:
        return order
    if len(classes) != n:
        raise DensekitError(f"{len(classes)} class sets for {n} items")
    counts: dict[int, int] = {}
    for held in classes:
        for c in held:
            counts[c] = counts.get(c, 0) + 1
    first: list[int] = []
    for c in sorted(counts, key=lambda c: (counts[c], c)):
        if any(c in classes[i] for i in first):
            continue
        first.append(next(i for i in order if c in classes[i]))
    chosen = set(first)
    return first + [i for i in order if i not in chosen]


def subset_size(n: int, fraction: float | None = None, count: int | None = None) -> int:
    """Items in a subset of ``n``: ``count``, or ``fraction`` of ``n`` rounded (at least 1)."""
    if (fraction is None) == (count is None):
        raise DensekitError("give exactly one of label_fraction and label_count")
    if count is not None:
        if count < 1:
            raise DensekitError(f"label_count must be >= 1, got {count}")
        if count > n:
            raise DensekitError(f"label_count {count} is more than the {n} labelled training items")
        return int(count)
    assert fraction is not None
    if not 0 < fraction <= 1:
        raise DensekitError(f"label_fraction must be in (0, 1], got {fraction}")
    return max(1, round(fraction * n))


@dataclass(frozen=True)
class LabelledSubset:
    """Which labelled training items a data module keeps (see the module docstring).

    Attributes:
        fraction, count: keep this fraction of the items (rounded, at least 1) or this many;
            both None: all of them.
        seed: the seed of the nested order.
        stratify: the smallest subsets still hold every class of the training items.

    Raises:
        DensekitError: both ``fraction`` and ``count``, a count below 1 or a fraction outside
            (0, 1].
    """

    fraction: float | None = None
    count: int | None = None
    seed: int = 0
    stratify: bool = False

    def __post_init__(self) -> None:
        if self.selects:
            subset_size(1 if self.count is None else self.count, self.fraction, self.count)

    @property
    def selects(self) -> bool:
        """Whether a part of the items is kept (a fraction or a count is given)."""
        return self.fraction is not None or self.count is not None

    def indices(self, n: int, classes: Sequence[set[int]] | None = None) -> list[int]:
        """The kept items among ``n``, in index order; ``classes``: the classes each item
        holds, used with ``stratify``."""
        size = subset_size(n, self.fraction, self.count)
        order = nested_order(n, self.seed, classes if self.stratify else None)
        return sorted(order[:size])
