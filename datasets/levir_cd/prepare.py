#!/usr/bin/env python3
"""Check a LEVIR-CD download (split folders with A/B/label) and write the data fragment."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from check_layout import main

if __name__ == "__main__":
    sys.exit(
        main(
            __doc__,
            {
                "images1": "train/A/*.png",
                "images2": "train/B/*.png",
                "labels": "train/label/*.png",
                "val_images1": "val/A/*.png",
                "val_images2": "val/B/*.png",
                "val_labels": "val/label/*.png",
                "test_images1": "test/A/*.png",
                "test_images2": "test/B/*.png",
                "test_labels": "test/label/*.png",
            },
            {"label_map": {0: 0, 255: 1}},
        )
    )
