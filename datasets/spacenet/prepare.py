#!/usr/bin/env python3
"""Check a SpaceNet buildings download (PAN images + GeoJSON footprints) and write the data
fragment: labels are the GeoJSON files themselves, rasterised on each image's grid."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from check_layout import main

if __name__ == "__main__":
    sys.exit(
        main(
            __doc__,
            {"images": "PAN/*.tif", "labels": "geojson_buildings/*.geojson"},
            {"bands": [1, 1, 1]},
        )
    )
