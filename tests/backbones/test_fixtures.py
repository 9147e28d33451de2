"""The copied reference fixtures are the ones Meta's code produced (sha256 from the manifest)."""

import hashlib
import json

from helpers import FIXTURES


def test_fixture_files_match_manifest():
    manifest = json.loads((FIXTURES / "MANIFEST.json").read_text())
    files = sorted(p for d in ("tiny", "keys") for p in (FIXTURES / d).iterdir())
    assert len(files) == 23 + 27  # tiny DINOv2/v3 files; the keys of all 26 architectures
    for path in files:
        rel = path.relative_to(FIXTURES).as_posix()
        assert rel in manifest, f"{rel} not in the manifest"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest[rel]["sha256"], rel
