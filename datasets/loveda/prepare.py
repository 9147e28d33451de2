#!/usr/bin/env python3
"""Check a LoveDA download (urban scenes) and write the data-config fragment."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from check_layout import main

if __name__ == "__main__":
    sys.exit(
        main(
            __doc__,
            {
                "images": "Train/Urban/images_png/*.png",
                "labels": "Train/Urban/masks_png/*.png",
                "val_images": "Val/Urban/images_png/*.png",
                "val_labels": "Val/Urban/masks_png/*.png",
            },
            {"label_map": {0: 255, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6}},
        )
    )
