"""The remote-sensing quickstart's tasks (``densekit quickstart --task NAME``): the bundled
data, the bands, and the model that the bundled backbone trains on them.

* ``water`` (default): flood and surface water on the Sen1Floods11 hand-labelled chip (Sentinel-2
  L1C, 13 bands, 10 m, Spain, CC BY 4.0; see ``densekit/samples/ATTRIBUTION.md``). A linear head
  on the backbone's features of B4, B3, B2 fused with a pixel branch on all 13 bands
  (``pixel_branch``): the backbone gives the context, the pixel branch the spectral detail a
  16-pixel (160 m) patch cannot. A task the bundled backbone does well.
* ``buildings``: building footprints on the SpaceNet Atlanta tile (WorldView panchromatic, 0.5
  m, CC BY-SA 4.0), linear heads on the pan band repeated on three channels. A task the bundled
  backbone does badly: its features carry little about buildings at 0.5 m, and the score stays
  near the trivial predictor's (a U-Net trained from scratch does far better: see the
  benchmark card the quickstart writes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from densekit.commands.quickstart.steps import SAMPLES

GeoTaskName = Literal["water", "buildings"]

S2_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


@dataclass(frozen=True)
class GeoTask:
    """One remote-sensing quickstart task.

    Args:
        name: the ``--task`` name.
        what: one line for the console (data, resolution, licence).
        expect: what to expect of the score, honestly.
        image, labels: the bundled rasters.
        label_map: raw label values -> classes (255: ignored).
        class_names: the classes; the last is the positive class scored.
        bands: the image bands the model takes (1-based indices or names).
        display: the bands shown as the picture (three for colour, one for grey).
        model: the model options beyond backbone, weights, classes and statistics.
        window: the training window side.
        epochs: the default number of training epochs.
        batch_size: windows per training step.
    """

    name: GeoTaskName
    what: str
    expect: str
    image: Path
    labels: Path
    label_map: dict[int, int]
    class_names: list[str]
    bands: list[int | str]
    display: list[int]
    model: dict[str, Any] = field(default_factory=dict)
    window: int = 112
    epochs: int = 15
    batch_size: int = 8

    @property
    def positive(self) -> str:
        return self.class_names[-1]


WATER = GeoTask(
    name="water",
    what="Sen1Floods11 chip Spain_7370579: Sentinel-2 L1C, 13 bands, 512 x 512 at 10 m, "
    "hand-labelled water (CC BY 4.0)",
    expect="a task the bundled backbone does well with the pixel branch",
    image=SAMPLES / "sen1floods11" / "S2Hand.tif",
    labels=SAMPLES / "sen1floods11" / "LabelHand.tif",
    label_map={-1: 255, 0: 0, 1: 1},
    class_names=["land", "water"],
    bands=list(S2_BANDS),
    display=[4, 3, 2],
    model={
        "head": "linear",
        "layers": "last4",
        "loss": "ce+dice",
        "lr": 0.01,
        "warmup_steps": 10,
        "backbone_bands": [3, 2, 1],  # the RGB backbone sees B4, B3, B2
        "pixel_branch": 16,  # all 13 bands at full resolution
    },
    window=64,
    epochs=30,
)

BUILDINGS = GeoTask(
    name="buildings",
    what="SpaceNet Atlanta tile: WorldView panchromatic, 900 x 900 at 0.5 m, building "
    "footprints (CC BY-SA 4.0)",
    expect="a task the bundled backbone does badly (IoU near the trivial predictor's; a U-Net "
    "from scratch does far better)",
    image=SAMPLES / "spacenet_atlanta" / "image.tif",
    labels=SAMPLES / "spacenet_atlanta" / "buildings.tif",
    label_map={0: 0, 255: 1},
    class_names=["background", "building"],
    bands=[1, 1, 1],  # the panchromatic band repeated for an RGB backbone
    display=[1],
    model={
        "head": "linear",
        "layers": "last4",
        "loss": "ce",
        "class_weights": [1.0, 8.0],  # buildings are about 5 % of the pixels
        "warmup_steps": 5,
        "head_grid": {"lr": [0.001, 0.003, 0.01, 0.03], "layers": ["last4"]},
    },
    window=112,
    epochs=15,
)

GEO_TASKS: dict[str, GeoTask] = {"water": WATER, "buildings": BUILDINGS}
