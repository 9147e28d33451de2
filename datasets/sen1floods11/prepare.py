#!/usr/bin/env python3
"""Check a Sen1Floods11 hand-labelled download and write the data-config fragment."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from check_layout import main

if __name__ == "__main__":
    sys.exit(
        main(
            __doc__,
            {"images": "S2Hand/*_S2Hand.tif", "labels": "LabelHand/*_LabelHand.tif"},
            {"label_map": {-1: 255, 0: 0, 1: 1}},
        )
    )
