"""``densekit tile`` never damages files: it does not write over its inputs, one run per
output at a time, ``--resume`` only on unchanged inputs, no map from non-finite outputs, the
geotransform of a raster without a CRS kept, rasters smaller than a tile tiled, and on any
failure (a full disk included) no output at the final path (the previous one kept)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from helpers import TEST_DATA, write_raster
from rasterio.transform import Affine, from_origin

from densekit.cli import main
from densekit.inference.safety import output_lock

LEGACY = TEST_DATA / "checkpoints_v0"
CKPT = str(LEGACY / "seg_linear.ckpt")  # a 3-class segmentation model, patch 14, uint8 RGB
CHANGE = str(LEGACY / "change_linear.ckpt")


def raster(path, w=150, h=130, seed=0, **kwargs) -> str:
    """A 3-band uint8 raster with a pattern the model sees (UTM 33N unless ``crs`` says)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    data = np.stack(
        [((xx // 9 + yy // 7 + b) % 5) * 40 + rng.integers(1, 30, (h, w)) for b in range(3)]
    ).astype(np.uint8)
    kwargs.setdefault("crs", "EPSG:32633")
    write_raster(path, data, **kwargs)
    return str(path)


def tile_cli(capsys, src, out, *extra: str) -> tuple[int, str]:
    """``densekit tile`` with a 56-pixel tile: the exit status and what it printed on stderr."""
    argv = ["tile", "--checkpoint", CKPT, "--input", str(src), "--output", str(out),
            "--tile", "56", "--overlap", "14", "--no-progress", *extra]  # fmt: skip
    code = main(argv)
    return code, capsys.readouterr().err


def only_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- never over an input --------------------------------------------------------------------
def test_output_equal_to_the_input_is_refused(tmp_path, capsys):
    src = raster(tmp_path / "s.tif")
    before = (tmp_path / "s.tif").read_bytes()
    code, err = tile_cli(capsys, src, src)
    assert code == 2
    assert only_line(err) == (
        f"densekit tile: error: output {src} is the input {src}: the run would write over its "
        "input; give another output path"
    )
    os.symlink(src, tmp_path / "link.tif")  # the same file under another name
    code, err = tile_cli(capsys, src, tmp_path / "link.tif")
    assert code == 2 and "is the input" in only_line(err)
    assert (tmp_path / "s.tif").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.tif", "s.tif"]


def test_probabilities_path_equal_to_the_input_is_refused(tmp_path, capsys):
    src = raster(tmp_path / "x_probs.tif")
    before = (tmp_path / "x_probs.tif").read_bytes()
    code, err = tile_cli(capsys, src, tmp_path / "x.tif", "--probabilities")
    assert code == 2
    assert f"probabilities output {src} is the input {src}" in only_line(err)
    assert (tmp_path / "x_probs.tif").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_probs.tif"]
    # without --probabilities nothing is written at that path: allowed
    assert tile_cli(capsys, src, tmp_path / "x.tif")[0] == 0
    assert (tmp_path / "x_probs.tif").read_bytes() == before


def test_output_equal_to_the_second_date_is_refused(tmp_path, capsys):
    a, b = raster(tmp_path / "a.tif"), raster(tmp_path / "b.tif", seed=1)
    argv = ["tile", "--checkpoint", CHANGE, "--input", a, "--input2", b, "--output", b,
            "--tile", "56", "--overlap", "14", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert f"output {b} is the input2 {b}" in only_line(capsys.readouterr().err)


# -- one run per output ---------------------------------------------------------------------
def test_a_second_run_on_the_same_output_is_refused_while_the_first_lives(tmp_path, capsys):
    src = raster(tmp_path / "s.tif")
    out = tmp_path / "o.tif"
    partial = tmp_path / "o.tif.partial"
    partial.mkdir()
    (partial / "progress-0.json").write_text("{}")  # the first run's work
    with output_lock(out):
        code, err = tile_cli(capsys, src, out)
    assert code == 2
    assert only_line(err) == (
        f"densekit tile: error: output {out}: another densekit tile run (process {os.getpid()}) "
        "is writing it; wait for it to end or give another output path"
    )
    assert (partial / "progress-0.json").read_text() == "{}"  # left alone
    assert not out.exists()
    assert tile_cli(capsys, src, out)[0] == 0  # the lock is gone with its holder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "o.tif", "s.tif"]


@pytest.mark.slow
def test_two_processes_on_one_output(tmp_path):
    """A real second process is refused while the first runs; the first is left alone."""
    src = raster(tmp_path / "s.tif", w=3000, h=3000)
    out = tmp_path / "o.tif"
    argv = [sys.executable, "-m", "densekit.cli", "tile", "--checkpoint", CKPT, "--input", src,
            "--output", str(out), "--tile", "56", "--overlap", "14", "--no-progress"]  # fmt: skip
    first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "o.tif.partial"
    deadline = time.monotonic() + 120
    while not list(partial.glob("map-*.tif")) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second: make it longer"
        assert second.returncode == 2, second.stderr
        assert "another densekit tile run" in second.stderr and "Traceback" not in second.stderr
        assert list(partial.glob("map-*.tif"))  # the first run's work is still there
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 143
    assert not out.exists() and partial.is_dir()


# -- resume only on the same input ------------------------------------------------------------
def test_resume_refuses_a_replaced_input(tmp_path, capsys):
    src = raster(tmp_path / "s.tif", h=300)
    out = tmp_path / "o.tif"
    assert tile_cli(capsys, src, out, "--stop-after-strips", "2")[0] == 3
    stat = os.stat(src)
    raster(tmp_path / "s.tif", h=300, seed=1)  # same size, other pixels
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` keeps the time
    assert os.stat(src).st_size == stat.st_size
    code, err = tile_cli(capsys, src, out, "--resume")
    assert code == 2
    line = only_line(err)
    assert "resume: the input changed since the unfinished run" in line
    assert "input: first_strip_sha256" in line and "run without resume" in line
    assert not out.exists()
    raster(tmp_path / "s.tif", h=300)  # the original pixels, a new modification time
    code, err = tile_cli(capsys, src, out, "--resume")
    assert code == 2 and "input: mtime_ns" in only_line(err)
    assert tile_cli(capsys, src, out)[0] == 0  # without resume: a fresh run


# -- no map from non-finite outputs -------------------------------------------------------------
def test_a_nan_weight_is_an_error_naming_the_first_tile(tmp_path, capsys):
    stored = torch.load(CKPT, map_location="cpu", weights_only=True)
    key = next(k for k in stored["state_dict"] if "head" in k and k.endswith("weight"))
    stored["state_dict"][key].view(-1)[0] = float("nan")
    torch.save(stored, tmp_path / "nan.ckpt")
    src = raster(tmp_path / "s.tif")
    out = tmp_path / "o.tif"
    argv = ["tile", "--checkpoint", str(tmp_path / "nan.ckpt"), "--input", src, "--output",
            str(out), "--tile", "56", "--overlap", "14", "--no-progress", "--probabilities"]  # fmt: skip
    assert main(argv) == 2
    line = only_line(capsys.readouterr().err)
    assert f"input {src}: the model's output is NaN or infinite on" in line
    assert "the tile at column 0, row 0; no map is written" in line
    assert not out.exists() and not (tmp_path / "o_probs.tif").exists()


def test_nan_and_inf_pixels_without_nodata_become_nodata(tmp_path):
    data = np.random.default_rng(0).uniform(0, 255, (3, 60, 70)).astype(np.float32)
    data[:, 10, 10] = np.nan
    data[1, 30, 40] = np.inf
    write_raster(tmp_path / "f.tif", data, crs="EPSG:32633")  # no nodata value
    assert main(["tile", "--checkpoint", CKPT, "--input", str(tmp_path / "f.tif"), "--output",
                 str(tmp_path / "o.tif"), "--tile", "56", "--overlap", "14",
                 "--no-progress"]) == 0  # fmt: skip
    with rasterio.open(tmp_path / "o.tif") as o:
        labels = o.read(1)
        assert o.nodata == 255
    assert labels[10, 10] == 255 and labels[30, 40] == 255
    assert (labels != 255).sum() == labels.size - 2


# -- georeferencing kept ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "transform",
    [from_origin(350000, 5600000, 0.5, 0.5), Affine(0.5, 0.1, 1000, 0.1, -0.5, 2000)],
    ids=["no crs", "rotated, no crs"],
)
def test_a_geotransform_without_a_crs_is_kept(tmp_path, capsys, transform):
    data = raster(tmp_path / "s.tif", h=300, crs=None)
    with rasterio.open(data, "r+") as d:
        d.transform = transform
    code, err = tile_cli(capsys, data, tmp_path / "o.tif", "--probabilities")
    assert code == 0, err
    for name in ("o.tif", "o_probs.tif"):
        with rasterio.open(tmp_path / name) as o:
            assert o.crs is None and o.transform.almost_equals(transform), name


def test_a_rotated_georeferenced_raster_keeps_crs_and_transform(tmp_path, capsys):
    transform = Affine(10, 2, 500000, 2, -10, 4600000)
    src = raster(tmp_path / "s.tif", transform=transform)
    assert tile_cli(capsys, src, tmp_path / "o.tif")[0] == 0
    with rasterio.open(tmp_path / "o.tif") as o:
        assert o.crs.to_epsg() == 32633 and o.transform.almost_equals(transform)


# -- small and thin rasters ---------------------------------------------------------------------
@pytest.mark.parametrize(("w", "h"), [(1, 1), (5, 3), (13, 40), (3000, 5)])
def test_rasters_smaller_than_a_tile_are_padded_and_tiled(tmp_path, capsys, w, h):
    src = raster(tmp_path / "s.tif", w=w, h=h)
    code, err = tile_cli(capsys, src, tmp_path / "o.tif", "--probabilities")
    assert code == 0, err
    with rasterio.open(tmp_path / "o.tif") as o, rasterio.open(src) as s:
        labels = o.read(1)
        assert labels.shape == (h, w) and o.transform == s.transform
    assert set(np.unique(labels)) <= {0, 1, 2}
    with rasterio.open(tmp_path / "o_probs.tif") as p:
        np.testing.assert_allclose(p.read().sum(axis=0), 1, rtol=1e-5)


def test_a_one_pixel_raster_gives_the_model_s_class_for_that_pixel(tmp_path, capsys):
    from densekit.inference import load_trained

    big = raster(tmp_path / "big.tif", w=14, h=14)
    with rasterio.open(big) as s:
        pixel = s.read(window=((0, 1), (0, 1)))
    write_raster(tmp_path / "one.tif", pixel, crs="EPSG:32633")
    assert tile_cli(capsys, tmp_path / "one.tif", tmp_path / "o.tif")[0] == 0
    with rasterio.open(tmp_path / "o.tif") as o:
        got = o.read(1)
    # the model on that pixel padded (nodata outside) to one 14-pixel patch
    model = load_trained(CKPT)
    x = torch.full((1, 3, 14, 14), float("nan"))
    x[0, :, 0, 0] = torch.from_numpy(pixel[:, 0, 0].astype(np.float32))
    want = model.output.finish(model.output.activate(model(x)).numpy()[0])[0, 0]
    assert got[0, 0] == want


# -- damaged inputs -------------------------------------------------------------------------------
def test_damaged_geotiff_and_cog_inputs(tmp_path, capsys):
    src = raster(tmp_path / "s.tif", w=300, h=300)
    rasterio.shutil.copy(src, tmp_path / "c.tif", driver="COG", COMPRESS="DEFLATE")
    for name in ("s.tif", "c.tif"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) * 2 // 3])
        out = tmp_path / f"o_{name}"
        code, err = tile_cli(capsys, tmp_path / f"cut_{name}", out)
        line = only_line(err)
        assert code == 2 and f"cut_{name}" in line, line
        assert "damaged" in line or "not a readable raster" in line, line
        assert not out.exists()
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + os.urandom(500))
    code, err = tile_cli(capsys, tmp_path / "junk.tif", tmp_path / "o.tif")
    assert code == 2 and "junk.tif: not a readable raster" in only_line(err)


# -- full disk, and resume once space is freed --------------------------------------------------
def test_a_full_disk_during_assembly_leaves_the_previous_output(tmp_path, capsys, monkeypatch):
    src = raster(tmp_path / "s.tif", h=300)
    out = tmp_path / "o.tif"
    assert tile_cli(capsys, src, out)[0] == 0
    previous = out.read_bytes()
    raster(tmp_path / "s.tif", h=300, seed=3)
    real_copy = rasterio.shutil.copy

    def full(src_path, dst_path, **kwargs):
        with open(dst_path, "wb") as f:
            f.write(b"II*\x00half")  # what a full disk leaves
        raise rasterio.errors.RasterioIOError(
            f"{dst_path}: Free disk space available is 0 bytes, whereas 1000 are at least "
            "necessary. No space left on device"
        )

    monkeypatch.setattr(rasterio.shutil, "copy", full)
    code, err = tile_cli(capsys, src, out)
    assert code == 1
    assert only_line(err) == f"densekit tile: error: {out}: no space left on device"
    assert out.read_bytes() == previous  # the complete previous output
    assert not list(tmp_path.glob(".o.partial-*")) and not (tmp_path / ".o.tif.lock").exists()
    monkeypatch.setattr(rasterio.shutil, "copy", real_copy)
    assert tile_cli(capsys, src, out, "--resume")[0] == 0  # space freed: the run completes
    assert tile_cli(capsys, src, tmp_path / "clean.tif")[0] == 0
    assert out.read_bytes() == (tmp_path / "clean.tif").read_bytes()


def test_a_full_disk_while_writing_strips(tmp_path, capsys, monkeypatch):
    from densekit.inference.strips import StripWriter

    src = raster(tmp_path / "s.tif", h=300)
    out = tmp_path / "o.tif"
    real = StripWriter.strip_done
    calls = {"n": 0}

    def full(self, count):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.progress_file))
        return real(self, count)

    monkeypatch.setattr(StripWriter, "strip_done", full)
    code, err = tile_cli(capsys, src, out)
    assert code == 1
    assert only_line(err) == f"densekit tile: error: {out}: no space left on device"
    assert not out.exists() and (tmp_path / "o.tif.partial").is_dir()
    monkeypatch.setattr(StripWriter, "strip_done", real)
    assert tile_cli(capsys, src, out, "--resume")[0] == 0
    assert tile_cli(capsys, src, tmp_path / "clean.tif")[0] == 0
    assert out.read_bytes() == (tmp_path / "clean.tif").read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root"
)
def test_a_real_full_file_system(tmp_path, capsys):
    """On a 300 KiB tmpfs: one line, exit 1, nothing at the output path."""
    fs = tmp_path / "fs"
    fs.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(fs)]).returncode:
        pytest.skip("mount -t tmpfs failed here")
    try:
        src = raster(tmp_path / "s.tif", w=2000, h=600)
        code, err = tile_cli(capsys, src, fs / "o.tif", "--probabilities")
        assert code == 1, err
        assert only_line(err).startswith(f"densekit tile: error: {fs / 'o'}"), err
        assert "no space left on device" in only_line(err)
        assert not (fs / "o.tif").exists() and not (fs / "o_probs.tif").exists()
    finally:
        subprocess.run(["umount", str(fs)])


# -- SIGTERM ends a run promptly ------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_ends_tile_promptly_and_resume_completes(tmp_path):
    src = raster(tmp_path / "s.tif", w=1200, h=1200)
    out = tmp_path / "o.tif"
    argv = [sys.executable, "-m", "densekit.cli", "tile", "--checkpoint", CKPT, "--input", src,
            "--output", str(out), "--tile", "56", "--overlap", "14", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "o.tif.partial"
    deadline = time.monotonic() + 120
    while not list(partial.glob("map-*.tif")) and time.monotonic() < deadline:
        time.sleep(0.1)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    assert time.monotonic() - sent < 10
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 143 and err.strip().endswith("stopped by SIGTERM"), err
    assert not out.exists() and partial.is_dir()
    assert subprocess.run([*argv, "--resume"], timeout=600).returncode == 0
