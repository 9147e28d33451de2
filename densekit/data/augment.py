"""Training augmentation with albumentations.

Geometric transforms (albumentations' flips and 90-degree rotations) are drawn once per sample
and applied identically to the image, both dates of a pair, the label mask and the depth target;
the photometric transform, a random gain, is drawn separately for each date. The gain is applied
directly: albumentations' photometric transforms clip float images to [0, 1], which would destroy
raw values such as reflectance (the task normalises later). Configurable from YAML:

    data:
      init_args:
        augment: {hflip: 0.5, vflip: 0.5, rotate90: 0.5, gain: 0.1}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import albumentations as A
import numpy as np
import torch


@dataclass
class Augmentation:
    """Probabilities of the geometric transforms and the range of the per-date gain.

    Args:
        hflip, vflip: probability of a horizontal / vertical flip.
        rotate90: probability of a rotation by a random multiple of 90 degrees.
        gain: each date's image is multiplied by a factor drawn from ``[1 - gain, 1 + gain]``
            (0 disables it).
    """

    hflip: float = 0.5
    vflip: float = 0.5
    rotate90: float = 0.5
    gain: float = 0.0

    def build(self) -> Transforms:
        targets = {"image2": "image", "depth": "mask"}
        flips = [A.HorizontalFlip(p=self.hflip), A.VerticalFlip(p=self.vflip)]
        square = A.Compose([*flips, A.RandomRotate90(p=self.rotate90)], additional_targets=targets)
        # a 90-degree turn would change the shape of a non-square item: flips only
        other = A.Compose(flips, additional_targets=targets)
        return Transforms(square, other, self.gain)


@dataclass
class Transforms:
    """The built transforms of an :class:`Augmentation`."""

    square: A.Compose
    non_square: A.Compose
    gain: float


def apply(item: dict[str, Any], transforms: Transforms) -> dict[str, Any]:
    """Augment a dataset item in place (tensors ``(C, H, W)``, masks ``(H, W)``)."""
    first = item["image"] if "image" in item else item["image1"]
    h, w = first.shape[-2:]
    geometric = transforms.square if h == w else transforms.non_square
    gain = transforms.gain
    keys = [k for k in ("image", "image1", "image2") if k in item]
    arrays: dict[str, np.ndarray] = {}
    for k in keys:
        arrays["image" if k in ("image", "image1") else "image2"] = item[k].permute(1, 2, 0).numpy()
    if "mask" in item:
        arrays["mask"] = item["mask"].numpy()
    if "depth" in item:
        arrays["depth"] = item["depth"][0].numpy()
    # albumentations keeps generators of its own, which seed_everything does not reach and no
    # checkpoint keeps: seed them from torch's for each item, so augmentations follow torch's
    # generator (seeded, its state kept in checkpoints; PyTorch seeds each worker's apart)
    geometric.set_random_seed(int(torch.randint(0, 2**31, ())))
    out = geometric(**arrays)
    for k in keys:
        img = np.ascontiguousarray(out["image" if k in ("image", "image1") else "image2"])
        if gain > 0:  # per date
            img = img * np.float32(1 + (2 * torch.rand(()).item() - 1) * gain)
        item[k] = torch.from_numpy(img.transpose(2, 0, 1).copy())
    if "mask" in item:
        item["mask"] = torch.from_numpy(np.ascontiguousarray(out["mask"]).astype(np.int64))
    if "depth" in item:
        item["depth"] = torch.from_numpy(np.ascontiguousarray(out["depth"])[None].copy())
    return item
