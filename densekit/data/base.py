"""What every densekit data module shares: the loaders, the labelled subset, augmentation, the
number of training items per epoch, and closing the readers at the end of a stage.

The settings arrive as flat, typed ``__init__`` arguments (the YAML keys ``batch_size``,
``label_fraction``, ...) and are held in two frozen option groups: :class:`Loaders` (how items
reach the model) and :class:`~densekit.data.subsets.LabelledSubset` (which labelled training
items are kept). A concrete module passes them on with ``**kwargs``, which LightningCLI follows
to see every argument with its type. :class:`~densekit.data.datamodules.RasterDataModule` adds
the raster options; the medical modules build on this base directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from densekit.data.augment import Augmentation
from densekit.data.datasets import TaskKind
from densekit.data.seeded import SeededDataset, SeededSampler
from densekit.data.subsets import LabelledSubset
from densekit.errors import DensekitError

if TYPE_CHECKING:
    from densekit.data.band_layout import BandLayout


@dataclass(frozen=True)
class Loaders:
    """How the items of every split reach the model.

    Attributes:
        batch_size: items per batch.
        num_workers: DataLoader worker processes (0: the main process reads).
        samples_per_epoch: training items per epoch: random windows, or fixed items in a fresh
            random order, repeated or cut to this number (None: each training item once).
    """

    batch_size: int = 8
    num_workers: int = 0
    samples_per_epoch: int | None = None


class DenseDataModule(L.LightningDataModule):
    """The base of every data module (not used directly).

    Args (every data module):
        batch_size, num_workers: DataLoader settings.
        samples_per_epoch: training items per epoch: random windows, or fixed training items in
            a fresh random order, repeated or cut to this number (default: each item once).
        augment: training augmentation (flips, rotations, gain), or None.
        label_fraction, label_count: keep this fraction (rounded, at least 1) or number of the
            labelled training items; None: all.
        subset_seed: the seed of the subset's order (nested: a smaller subset of one seed lies
            inside a larger one).
        stratify: the smallest subsets still hold every class of the training items.
    """

    kind: ClassVar[TaskKind]
    # what a missing split needs, for the error of _loader; the loaders' batch assembly
    split_files: ClassVar[str] = "{name}_* files"
    collate_fn: Any = None

    def __init__(
        self,
        batch_size: int = 8,
        num_workers: int = 0,
        samples_per_epoch: int | None = None,
        augment: Augmentation | None = None,
        label_fraction: float | None = None,
        label_count: int | None = None,
        subset_seed: int = 0,
        stratify: bool = False,
    ) -> None:
        check_loader_options(batch_size, num_workers, samples_per_epoch)
        super().__init__()
        self.subset = LabelledSubset(label_fraction, label_count, subset_seed, stratify)
        if stratify and self.kind == "depth":
            raise DensekitError("stratify keeps classes in subsets; depth targets have none")
        self.loaders = Loaders(batch_size, num_workers, samples_per_epoch)
        self.augment = augment
        self.train_subset: dict[str, int] | None = None  # {"labelled": n, "kept": k} once set up
        self.datasets: dict[str, Dataset] = {}

    def training_rasters(self) -> BandLayout | None:
        """The band layout of the training rasters, recorded in checkpoints so that inference
        can refuse rasters of another kind; None where the data are not rasters."""
        return None

    def _subset_indices(self, n: int, classes: list[set[int]] | None) -> list[int]:
        """Indices of the kept training items among ``n`` (all without a fraction or count);
        ``classes``: the classes of each item, used with ``stratify``."""
        if not self.subset.selects:
            return list(range(n))
        kept = self.subset.indices(n, classes)
        self.train_subset = {"labelled": n, "kept": len(kept)}
        return kept

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            files = self.split_files.format(name=name)
            raise DensekitError(f"no {name} data: give {files} or split fractions that include it")
        dataset = self.datasets[name]
        sampler: Sampler | None = self.epoch_sampler(dataset) if shuffle else None
        seeded = shuffle and self._one_process()
        if seeded:  # each sample's random draws seeded by the main process
            sampler = SeededSampler(sampler or RandomSampler(dataset))  # type: ignore[arg-type]
            dataset = SeededDataset(dataset)
        return DataLoader(
            dataset,
            batch_size=self.loaders.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            # the workers' base seed from a generator of its own: drawn from the main one, it
            # would shift the main stream once per new iterator, and persistent workers make
            # one iterator per fit (a resumed fit would draw once more; 0 and 2 workers would
            # draw differently); not where the loader shuffles itself (it would use it)
            generator=None if shuffle and sampler is None else torch.Generator().manual_seed(0),
            num_workers=self.loaders.num_workers,
            persistent_workers=self.loaders.num_workers > 0,
            collate_fn=self.collate_fn,
        )

    def _one_process(self) -> bool:
        """Training in one process (see :mod:`densekit.data.seeded` for why several differ)."""
        trainer = getattr(self, "trainer", None)
        return trainer is None or trainer.world_size == 1

    def teardown(self, stage: str | None = None) -> None:
        """Close the open readers at the end of a stage (they reopen when read again):
        left to the garbage collector, a dataset closes inside some later rasterio call's
        environment, which rasterio reports as "No GDAL environment exists"."""
        for dataset in self.datasets.values():
            readers = getattr(dataset, "_readers", None)
            if readers is not None:
                readers.close()

    def epoch_sampler(self, dataset: Any) -> RandomSampler | None:
        """With ``samples_per_epoch``, fixed training items in a fresh random order each epoch,
        repeated or cut to that many (random windows set their own length instead)."""
        if not self.loaders.samples_per_epoch or getattr(dataset, "random_window", None):
            return None
        return RandomSampler(dataset, num_samples=self.loaders.samples_per_epoch)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.datasets:
            return []  # no validation split: Lightning skips validation
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.datasets else "val", shuffle=False)


def check_loader_options(batch_size: int, num_workers: int, samples_per_epoch: int | None) -> None:
    """Refuse loader settings that cannot work (``data.<name>`` keys), before anything is read."""
    for name, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise DensekitError(f"data.{name} {value!r}: give a whole number >= {least}")
    n = samples_per_epoch
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise DensekitError(f"data.samples_per_epoch {n!r}: give a whole number >= 1 (or null)")
