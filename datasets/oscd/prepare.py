#!/usr/bin/env python3
"""Check an OSCD download and write the data-config fragment (see README.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from check_layout import main

if __name__ == "__main__":
    sys.exit(
        main(
            __doc__,
            {
                "images1": "images/*/imgs_1",
                "images2": "images/*/imgs_2",
                "labels": "train_labels/*/cm/*-cm.tif",
            },
            {"label_map": {1: 0, 2: 1}},
        )
    )
