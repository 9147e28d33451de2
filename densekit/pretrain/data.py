"""Unlabelled images for self-supervised pretraining, cut into DINO multi-crops.

Sources are GeoTIFFs (or any raster GDAL reads), DICOM files and NIfTI volumes (axial slices,
through nibabel), named as files, folders or patterns. A raster is read one random window at a
time with the data issue's reader (bands by index or name, nodata from the file or overridden);
a DICOM file is read whole (pydicom applies the modality LUT and window, values in [0, 1]); a
NIfTI volume is read whole, reoriented to RAS, and a random axial slice drawn with each window.
Windows with more than ``max_invalid`` nodata pixels are redrawn; an image smaller than the
window is used whole (its crops are resized). Each source is standardised with its own per-band
mean and standard deviation, measured once on a decimated read (bounded memory), so sources of
different units mix; nodata becomes 0, the mean. A one-band source (panchromatic, CT, MR) is
repeated on every input channel.

Multi-crop (DINO): ``global_crops`` views of ``global_size`` (scale ``global_scale`` of the window)
and ``local_crops`` views of ``local_size`` (scale ``local_scale``), cut by albumentations'
``RandomResizedCrop`` with flips and 90-degree turns. Photometric jitter is applied to the
standardised values directly (albumentations' float transforms clip to [0, 1]): a brightness
shift, a contrast factor and a per-band gain, grey for three-band images with probability
``grey_p``, and a Gaussian blur (probability 1.0 / 0.1 for the two global views, 0.5 for the
local ones, as in DINO).

Randomness: the window draws, crops and jitter come from the dataset's own generators, seeded
from the process's torch seed (``seed_everything``), the global rank and the DataLoader worker,
so every DDP rank and worker draws different windows and a run with a seed is reproducible.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import lightning as L
import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from densekit.data.bands import BandRef, resolve_band_indices
from densekit.data.base import check_loader_options
from densekit.data.datasets import band_table, read_box, reference_grid
from densekit.data.files import RASTER_SUFFIXES, Files, list_rasters
from densekit.data.images import is_dicom, read_image
from densekit.data.nifti import NIFTI_SUFFIXES, read_nifti
from densekit.errors import DensekitError, InputImageError
from densekit.medical.slices import display_order

STATS_SIDE = 512  # longest side of the decimated read the per-source statistics come from


def is_nifti(path: str) -> bool:
    return path.lower().endswith(NIFTI_SUFFIXES)


def read_nifti_axial(path: str) -> np.ndarray:
    """A NIfTI volume as axial slices ``(Z, H, W)`` float32, in the display orientation every
    slice input of densekit has (:func:`~densekit.medical.slices.display_order`: anterior up,
    the patient's left on the right), whatever the file's storage order."""
    volume = read_nifti(path)
    display = display_order(volume, "axial")
    return np.ascontiguousarray(display.apply(volume.array), dtype=np.float32)


class Source:
    """One image file: its size, bands and standardisation."""

    def __init__(
        self, path: str, bands: list[BandRef] | None, nodata: float | None, channels: int
    ) -> None:
        self.path = path
        self.bands = bands
        self.nodata = nodata
        self.dicom = is_dicom(Path(path))
        self.volume: np.ndarray | None = None  # NIfTI: (slices, H, W)
        self.array: np.ndarray | None = None  # DICOM: the whole image
        self.invalid: np.ndarray | None = None
        sample: np.ndarray
        sample_invalid: np.ndarray | None
        if is_nifti(path):
            if bands is not None:
                raise DensekitError(f"{path}: 'bands' applies to rasters, not to NIfTI volumes")
            volume = read_nifti_axial(path)
            self.volume = volume
            _, self.height, self.width = volume.shape
            step = max(1, volume.shape[0] // 32)  # statistics from every few slices
            sample = volume[::step].reshape(1, -1, self.width)
            sample_invalid = None
        elif self.dicom:
            image = read_image(path)
            array = image.array.astype(np.float32)
            if bands is not None:
                array = array[resolve_band_indices(bands, list(image.band_names), path)]
            self.array = array
            if image.invalid is not None:
                self.invalid = np.asarray(image.invalid.any(0))
            self.height, self.width = image.shape
            sample = array
            sample_invalid = self.invalid
        else:
            self.grid, _ = reference_grid(path)
            self.height, self.width = self.grid.height, self.grid.width
            sample, sample_invalid = self._decimated()
        self.num_bands = int(sample.shape[0])
        if self.num_bands not in (1, channels):
            raise DensekitError(
                f"{path}: {self.num_bands} bands chosen, the model takes {channels} (choose "
                f"{channels} with 'bands', or a one-band source, which is repeated)"
            )
        valid = np.ones(sample.shape[1:], bool) if sample_invalid is None else ~sample_invalid
        values = sample[:, valid]
        if values.shape[1] < 16:
            raise InputImageError(f"{path}: (almost) every pixel is nodata; nothing to learn from")
        self.mean = values.mean(1).astype(np.float32)
        self.std = np.maximum(values.std(1), 1e-6).astype(np.float32)

    def _decimated(self) -> tuple[np.ndarray, np.ndarray]:
        table = band_table(self.path)
        names = [name for _, _, name in table]
        idx = (
            range(len(table))
            if self.bands is None
            else resolve_band_indices(self.bands, names, self.path)
        )
        scale = max(self.height, self.width) / STATS_SIDE
        h, w = (max(1, round(self.height / scale)), max(1, round(self.width / scale)))
        if scale <= 1:
            h, w = self.height, self.width
        out = np.empty((len(idx), h, w), np.float32)
        invalid = np.zeros((h, w), bool)
        try:
            for j, i in enumerate(idx):
                file, band, _ = table[i]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    with rasterio.open(file) as src:
                        arr = src.read(
                            band, out_shape=(h, w), resampling=Resampling.nearest, masked=True
                        )
                out[j] = arr.filled(0).astype(np.float32)
                invalid |= np.ma.getmaskarray(arr)
                if self.nodata is not None:
                    invalid |= out[j] == self.nodata
        except RasterioIOError as e:
            raise InputImageError(f"{self.path}: not a readable raster ({e})") from None
        invalid |= ~np.isfinite(out).all(0)
        return out, invalid

    @property
    def slices(self) -> int:
        """Axial slices of a NIfTI volume (1 for an image)."""
        return 1 if self.volume is None else int(self.volume.shape[0])

    def read(self, window: tuple[int, int, int, int], z: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Standardised ``(C, h, w)`` values and the invalid mask of ``window`` (of slice ``z``
        for a volume)."""
        c0, r0, w, h = window
        if self.volume is not None:
            x = self.volume[z : z + 1, r0 : r0 + h, c0 : c0 + w].copy()
            invalid = ~np.isfinite(x[0])
        elif self.array is not None:
            x = self.array[:, r0 : r0 + h, c0 : c0 + w].copy()
            invalid = np.zeros(x.shape[1:], bool)
            if self.invalid is not None:
                invalid |= self.invalid[r0 : r0 + h, c0 : c0 + w]
        else:
            region = (0, 0, self.width, self.height)
            x, inside, nodata = read_box(
                self.path, window, region, self.bands, self.grid, nodata=self.nodata
            )
            invalid = ~inside | nodata | ~np.isfinite(x).all(0)
        x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        x[:, invalid] = 0.0
        return x.astype(np.float32), invalid


class MultiCrop:
    """DINO's global and local views of one standardised window (see the module docstring)."""

    def __init__(
        self,
        global_size: int,
        local_size: int,
        local_crops: int,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        grey_p: float = 0.2,
    ) -> None:
        geometric = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
        self.global_crop = A.Compose(
            [A.RandomResizedCrop(size=(global_size, global_size), scale=global_scale), *geometric]
        )
        self.local_crop = A.Compose(
            [A.RandomResizedCrop(size=(local_size, local_size), scale=local_scale), *geometric]
        )
        self.local_crops = local_crops
        self.grey_p = grey_p
        self.generator = torch.Generator()
        self.reseed(int(torch.randint(0, 2**31, ())))

    def reseed(self, seed: int) -> None:
        """Seed the crops (albumentations) and the jitter (torch)."""
        self.generator.manual_seed(seed)
        self.global_crop.set_random_seed(seed + 1)
        self.local_crop.set_random_seed(seed + 2)

    def _jitter(self, x: torch.Tensor, blur_p: float) -> torch.Tensor:
        g = self.generator
        u = torch.rand(4, generator=g)
        if u[0] < 0.8:
            shift = (torch.rand((), generator=g) - 0.5) * 0.8
            contrast = 0.6 + torch.rand((), generator=g) * 0.8
            gain = 1 + (torch.rand(x.shape[0], 1, 1, generator=g) - 0.5) * 0.4
            x = (x - x.mean()) * contrast + x.mean() + shift
            x = x * gain
        if x.shape[0] == 3 and u[1] < self.grey_p:
            x = x.mean(0, keepdim=True).expand(3, -1, -1).clone()
        if u[2] < blur_p:
            sigma = float(0.1 + torch.rand((), generator=g) * 1.9)
            x = TF.gaussian_blur(x, kernel_size=[9, 9], sigma=[sigma, sigma])
        return x

    def __call__(self, image: np.ndarray) -> list[torch.Tensor]:
        hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
        crops = []
        for blur in (1.0, 0.1):
            out = self.global_crop(image=hwc)["image"]
            crops.append(self._jitter(torch.from_numpy(out.transpose(2, 0, 1).copy()), blur))
        for _ in range(self.local_crops):
            out = self.local_crop(image=hwc)["image"]
            crops.append(self._jitter(torch.from_numpy(out.transpose(2, 0, 1).copy()), 0.5))
        return crops


class UnlabelledWindows(Dataset):
    """Random windows of the sources (drawn by area, or uniformly), cut into multi-crops."""

    def __init__(
        self,
        sources: list[Source],
        window: int,
        length: int,
        channels: int,
        crops: MultiCrop,
        max_invalid: float = 0.5,
        uniform: bool = False,
    ) -> None:
        self.sources = sources
        self.window = window
        self.length = length
        self.channels = channels
        self.crops = crops
        self.max_invalid = max_invalid
        areas = np.array([1.0 if uniform else s.width * s.height for s in sources], np.float64)
        self.weights = torch.from_numpy(areas / areas.sum())
        self.generator = torch.Generator()
        self.reseed(int(torch.randint(0, 2**31, ())))

    def reseed(self, seed: int) -> None:
        """Seed the window draws and the crops."""
        self.generator.manual_seed(seed)
        self.crops.reseed(seed + 1)

    def __len__(self) -> int:
        return self.length

    def draw(self) -> tuple[Source, tuple[int, int, int, int], int]:
        """A source (by weight), a window in it and a slice (volumes; else 0)."""
        g = self.generator
        s = self.sources[int(torch.multinomial(self.weights, 1, generator=g))]
        w, h = min(self.window, s.width), min(self.window, s.height)
        col = int(torch.randint(0, s.width - w + 1, (), generator=g))
        row = int(torch.randint(0, s.height - h + 1, (), generator=g))
        z = int(torch.randint(0, s.slices, (), generator=g))
        return s, (col, row, w, h), z

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        for _ in range(50):
            source, window, z = self.draw()
            x, invalid = source.read(window, z)
            if invalid.mean() <= self.max_invalid:
                break
        else:
            raise DensekitError(
                f"50 random windows in a row were more than {self.max_invalid:.0%} nodata (last: "
                f"{source.path}, window {window}); check the sources' nodata"
            )
        if x.shape[0] == 1 and self.channels > 1:
            x = np.repeat(x, self.channels, axis=0)
        return self.crops(x)


def _collate(items: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack(views) for views in zip(*items, strict=True)]


def seed_for(*values: int) -> int:
    """A 31-bit seed mixing ``values`` (the process's torch seed, rank, worker)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0] >> 1)


def _seed_worker(worker_id: int, rank: int = 0) -> None:
    info = torch.utils.data.get_worker_info()
    if info is not None:  # a worker's torch seed is the loader's base seed + worker_id
        dataset: Any = info.dataset
        dataset.reseed(seed_for(torch.initial_seed(), rank, worker_id))


class PretrainDataModule(L.LightningDataModule):
    """Unlabelled images for ``densekit pretrain`` (see the module docstring).

    Args:
        images: files, folders or glob patterns of rasters and DICOM files (several allowed).
        bands: bands to read from every raster source, by 1-based index or name (None: all).
            Each source needs ``in_channels`` bands or one (repeated).
        in_channels: channels the backbone takes.
        nodata: a nodata value overriding the files' own.
        window: side of the random windows the crops are cut from.
        global_size, local_size: sides of the global and local crops (multiples of the patch).
        local_crops: number of local crops per window.
        global_scale, local_scale: area fractions of the window the crops cover.
        max_invalid: windows with a larger nodata fraction are redrawn.
        source_sampling: ``"area"`` draws sources in proportion to their pixels, ``"uniform"``
            each source equally often (one huge mosaic then does not dominate).
        samples_per_epoch: windows per epoch.
        batch_size, num_workers: DataLoader settings.
    """

    def __init__(
        self,
        images: list[Files],
        bands: list[BandRef] | None = None,
        in_channels: int = 3,
        nodata: float | None = None,
        window: int = 192,
        global_size: int = 96,
        local_size: int = 48,
        local_crops: int = 4,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        max_invalid: float = 0.5,
        source_sampling: Literal["area", "uniform"] = "area",
        samples_per_epoch: int = 1024,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        check_loader_options(batch_size, num_workers, samples_per_epoch)
        if samples_per_epoch < batch_size:
            raise DensekitError(
                f"data.samples_per_epoch {samples_per_epoch} is smaller than data.batch_size "
                f"{batch_size}: an epoch would have no full batch"
            )
        super().__init__()
        if not images:
            raise DensekitError("data.images is empty: give files, folders or patterns")
        for name, size in (("global_size", global_size), ("local_size", local_size)):
            if size > window:
                raise DensekitError(
                    f"data.{name} {size} is larger than data.window {window}; crops are cut "
                    "from the window"
                )
        self.images = images
        self.bands = list(bands) if bands is not None else None
        self.in_channels = in_channels
        self.nodata = nodata
        self.window = window
        self.global_size = global_size
        self.local_size = local_size
        self.crops = MultiCrop(global_size, local_size, local_crops, global_scale, local_scale)
        self.max_invalid = max_invalid
        self.source_sampling = source_sampling
        self.samples_per_epoch = samples_per_epoch
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.sources: list[Source] = []

    def list_files(self) -> list[str]:
        """Files, patterns and folders; a folder lists its rasters, DICOM and NIfTI files."""
        files: list[str] = []
        for spec in self.images:
            folder = Path(spec) if isinstance(spec, str) else None
            if folder is not None and folder.is_dir():
                found = sorted(
                    str(p)
                    for p in folder.iterdir()
                    if p.is_file()
                    and (p.suffix.lower() in RASTER_SUFFIXES or is_nifti(str(p)) or is_dicom(p))
                )
                if not found:
                    raise DensekitError(
                        f"data.images: folder {folder} holds no raster, DICOM or NIfTI file"
                    )
            else:
                found, _ = list_rasters(spec, "data.images")
            files += found
        return files

    def check_settings(self) -> None:
        """Read the sources' headers and refuse any smaller than a global crop (the CLI calls
        this before the model is built)."""
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.sources:
            return
        self.sources = [
            Source(f, self.bands, self.nodata, self.in_channels) for f in self.list_files()
        ]
        side = self.global_size
        for s in self.sources:
            if min(s.width, s.height) < side:
                raise DensekitError(
                    f"{s.path}: {s.width}x{s.height} is smaller than data.global_size {side}; "
                    "remove it or lower global_size (and local_size)"
                )

    def train_dataloader(self) -> DataLoader:
        """Random windows; seeded per global rank (and per worker; see the module docstring)."""
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else int(os.environ.get("RANK", 0))
        dataset = UnlabelledWindows(
            self.sources,
            self.window,
            self.samples_per_epoch,
            self.in_channels,
            self.crops,
            self.max_invalid,
            uniform=self.source_sampling == "uniform",
        )
        dataset.reseed(seed_for(torch.initial_seed(), rank))  # for num_workers 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
            worker_init_fn=functools.partial(_seed_worker, rank=rank),
            drop_last=True,
            persistent_workers=self.num_workers > 0,
        )


def describe_sources(sources: list[Source]) -> list[dict[str, Any]]:
    """What the pretraining read, for the export card."""
    return [{"path": s.path, "size": [s.height, s.width], "bands": s.num_bands} for s in sources]
