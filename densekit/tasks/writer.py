"""Writing ``densekit predict`` outputs: one GeoTIFF per window, georeferenced like its image.

For each item of a prediction batch the map (labels as uint8, or values such as depth as
float32, as the model's :class:`~densekit.models.OutputSpec` says) is written to
``<output_dir>/<image stem>_c<col>_r<row>.tif`` with the CRS of the source image and the
transform of the window; files appear complete or not at all.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import rasterio
from lightning.pytorch.callbacks import BasePredictionWriter
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from densekit.errors import DensekitError
from densekit.io import atomic_outputs
from densekit.tasks.base import DenseTask


class PredictionWriter(BasePredictionWriter):
    """Write each predicted window as a GeoTIFF (see the module docstring).

    Args:
        output_dir: where to write; default ``<run folder>/predictions``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def _folder(self, trainer: L.Trainer) -> Path:
        folder = Path(
            self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
        )
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(pl_module, DenseTask):
            raise DensekitError(f"PredictionWriter writes a DenseTask's outputs, not a {pl_module}")
        folder = self._folder(trainer)
        spec = pl_module.model.output
        if spec.is_map_of_classes:
            values = prediction["pred"]
        else:
            values = prediction[spec.description][:, 0]
        for i in range(values.shape[0]):
            image = str(batch["image_path"][i])
            col, row, w, h = (int(v) for v in batch["window"][i])
            data = values[i].detach().cpu().numpy().astype(spec.dtype)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(image) as src:
                    crs, transform = (
                        src.crs,
                        window_transform(Window(col, row, w, h), src.transform),
                    )
            out = folder / f"{Path(image).stem}_c{col}_r{row}.tif"
            profile = {
                "driver": "GTiff",
                "height": data.shape[0],
                "width": data.shape[1],
                "count": 1,
                "dtype": data.dtype.name,
                "crs": crs,
                "transform": transform,
                "compress": "deflate",
            }
            atomic_outputs({out: functools.partial(_write_tile, data, profile)})


def _write_tile(data: np.ndarray, profile: dict[str, Any], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)
