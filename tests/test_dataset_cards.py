"""Every dataset folder has a card and a prepare script; prepare scripts check real layouts."""

import subprocess
import sys
import warnings

import yaml
from helpers import REPO, needs_shared_data

from densekit.data import ChangeDataModule

CARDS = ("oscd", "levir_cd", "sen1floods11", "spacenet", "loveda")


def test_each_dataset_has_a_card_and_a_prepare_script():
    for name in CARDS:
        card = (REPO / "datasets" / name / "README.md").read_text()
        for heading in ("Source", "Licence", "Classes", "Layout read"):
            assert f"**{heading}" in card, (name, heading)
        assert (REPO / "datasets" / name / "prepare.py").is_file()
    assert not (REPO / "datasets" / "__init__.py").exists()


def test_oscd_prepare_writes_a_working_data_fragment(tmp_path):
    root = needs_shared_data("oscd-subset")
    out = tmp_path / "oscd.yaml"
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "datasets/oscd/prepare.py"),
            "--root",
            str(root),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    args = yaml.safe_load(out.read_text())["data"]["init_args"]
    dm = ChangeDataModule(**args, window=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")
    assert len({s.images for s in dm.datasets["train"].samples}) == 4  # four cities
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "datasets/levir_cd/prepare.py"),
            "--root",
            str(root),
            "--out",
            str(tmp_path / "x.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "nothing matches" in res.stderr
    assert not (tmp_path / "x.yaml").exists()
