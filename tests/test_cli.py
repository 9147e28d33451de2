"""The `densekit` command through its real entry point; bad input exits 2 and writes nothing."""

import re
import subprocess
import sys
import time

import pytest
import rasterio
import torch
from helpers import FIXTURES, REPO, TEST_DATA, TINY_DIMS

import densekit
from densekit.backbones.registry import REGISTRY
from densekit.cli import main

SAMPLE = REPO / "densekit" / "samples" / "landsat7_rgb.tif"
TINY_V2 = FIXTURES / "tiny" / "dinov2_vits14_tiny.pth"
TINY_ARCH = [a for k, v in {**TINY_DIMS, "mlp_ratio": 4}.items() for a in ("--arch", f"{k}={v}")]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["densekit", *args], capture_output=True, text=True, timeout=300)


def test_help_and_version():
    res = run("--help")
    assert res.returncode == 0 and "backbones" in res.stdout and "features" in res.stdout
    res = run("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"densekit {densekit.__version__}"


@pytest.mark.parametrize("command", ["backbones", "heads"])
def test_listings_answer_quickly_without_torch(command):
    """``densekit --help``, ``densekit backbones`` and ``densekit heads`` import what they use:
    not torch (the issue's measure: under 2 s, from ~9 s)."""
    code = (
        f"import sys; from densekit.cli import main; main([{command!r}]); "
        "print(sorted(m for m in ('torch', 'lightning', 'timm', 'rasterio') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"
    for args in (["--help"], [command]):
        start = time.perf_counter()
        res = run(*args)
        assert res.returncode == 0 and time.perf_counter() - start < 2.0, args


def test_backbones_piped_is_one_line_per_entry():
    res = run("backbones")
    lines = res.stdout.splitlines()
    vitl16 = [line.split()[0] for line in lines if line.startswith("dinov3_vitl16")]
    assert vitl16 == ["dinov3_vitl16", "dinov3_vitl16_sat493m", "dinov3_vitl16plus"]
    firsts = [line.split()[0] for line in lines if line.strip()]
    assert [n for n in firsts if n in REGISTRY] == list(REGISTRY)  # one line each
    assert "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth" in next(
        line for line in lines if line.startswith("dinov3_vitl16_sat493m ")
    )


def test_a_closed_pipe_ends_quietly():
    """``densekit backbones | head -1``: no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        ["densekit", "backbones"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before densekit writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def test_backbones_table(capsys):
    assert main(["backbones", "--width", "250"]) == 0
    out = capsys.readouterr().out
    for name in (
        "dinov2_vits14",
        "dinov3_vit7b16_sat493m",
        "dinov3_convnext_large",
        "rad_dino",
        "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth",
        "sat493m",
    ):
        assert name in out


def test_features_on_the_sample_with_official_layout_weights(tmp_path, capsys):
    out, pca = tmp_path / "f.pt", tmp_path / "pca.png"
    code = main(
        [
            "features",
            str(SAMPLE),
            "--backbone",
            "dinov2_vits14",
            "--weights",
            str(TINY_V2),
            *TINY_ARCH,
            "--layers",
            "last4",
            "--out",
            str(out),
            "--pca",
            str(pca),
        ]
    )
    assert code == 0, capsys.readouterr().err
    rec = torch.load(out, weights_only=True)
    assert rec["backbone"] == "dinov2_vits14" and rec["layers"] == [2, 3, 4, 5]
    assert rec["image_size"] == [718, 791] and rec["padded_size"] == [728, 798]
    assert [tuple(f.shape) for f in rec["features"]] == [(1, 64, 52, 57)] * 4
    assert rec["weights"]["sha256"] and rec["weights"]["file"] == TINY_V2.name
    # compact tensors: a class token does not drag the whole token sequence into the file
    assert rec["class_tokens"][0].untyped_storage().nbytes() == 64 * 4
    assert out.stat().st_size < 1.2 * sum(f.numel() * 4 for f in rec["features"])
    with rasterio.open(pca) as png:
        assert (png.count, png.height, png.width) == (3, 718, 791)
        rgb = png.read()
    assert rgb.std() > 20  # a picture, not a flat image
    assert (rgb[:, 0, 0] == 0).all()  # the nodata border of the scene stays black
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pt", "pca.png"]


def test_features_of_a_dicom_slice(tmp_path, capsys):
    out = tmp_path / "ct.pt"
    code = main(
        [
            "features",
            str(TEST_DATA / "images" / "ct_window.dcm"),
            "--backbone",
            "dinov2_vits14",
            "--weights",
            str(TINY_V2),
            *TINY_ARCH,
            "--bands",
            "1,1,1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rec = torch.load(out, weights_only=True)
    assert rec["features"][0].shape == (1, 64, 3, 3)
    assert "Doe" not in repr(rec) and "DK-TEST" not in repr(rec)  # no patient tags


def test_random_weights_warn_in_the_output(tmp_path, capsys):
    code = main(
        [
            "features",
            str(TEST_DATA / "images" / "rgb_uint8.tif"),
            "--backbone",
            "dinov3_vits16",
            "--weights",
            "random",
            "--arch",
            "embed_dim=64",
            "--arch",
            "depth=2",
            "--arch",
            "num_heads=2",
            "--out",
            str(tmp_path / "f.pt"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "RANDOM weights" in err


IMAGES = TEST_DATA / "images"
# case -> (options replacing or adding to the defaults, expected message)
BAD = {
    "unknown backbone": (
        {"--backbone": "dinov2_vitx14", "--weights": "random"},
        r"unknown backbone 'dinov2_vitx14'; valid names: .*dinov2_vits14",
    ),
    "weights path missing": ({"--weights": "/nonexistent/w.pth"}, r"no such file or folder"),
    "weights of another architecture": (
        {"--weights": str(FIXTURES / "tiny" / "dinov3_vits16_tiny.pth")},
        r"weights do not fit dinov2_vits14",
    ),
    "not a checkpoint": (
        {"--weights": str(IMAGES / "data.py")},
        r"data.py: not a readable PyTorch checkpoint",
    ),
    "empty weights": ({"--weights": ""}, r"weights is empty"),
    "bands do not match": (
        {"IMAGE": str(IMAGES / "s2_uint16.tif")},
        r"has 4 band\(s\) but the backbone takes 3",
    ),
    "missing band": ({"--bands": "4,3,2"}, r"band 4 does not exist; the file has 3 band"),
    "non-finite pixels": (
        {"IMAGE": str(IMAGES / "nonfinite_float32.tif"), "--scale": "1", "--bands": "1,2,3"},
        r"2 pixel\(s\) are NaN or infinite",
    ),
    "smaller than a patch": (
        {"IMAGE": str(IMAGES / "small_uint8.tif")},
        r"smaller than one 14-pixel patch",
    ),
    "corrupt image": (
        {"IMAGE": str(IMAGES / "corrupt.tif")},
        r"corrupt.tif: not a readable raster",
    ),
    "non-image DICOM": ({"IMAGE": str(IMAGES / "rtplan.dcm")}, r"without pixel data"),
    "output folder missing": ({"--out": "missing/f.pt"}, r"--out .*does not exist"),
    "same output twice": ({"--pca": "f.pt"}, r"--out and --pca name the same file"),
    "layer out of range": ({"--layers": "99"}, r"layer indices \[99\] out of range 0..5"),
    "layers not numbers": ({"--layers": "first"}, r"--layers 'first': use"),
    "override not a number": ({"--arch": "embed_dim=abc"}, r"'abc' is not a number"),
    "override not an integer": ({"--arch": "embed_dim=64.5"}, r"a positive integer is needed"),
    "override zero": ({"--arch": "num_heads=0"}, r"num_heads=0: a positive integer"),
    "bad device": ({"--device": "foo"}, r"--device 'foo': not a torch device"),
    "stats with scale": ({"--stats": "stats.yaml", "--scale": "1"}, r"not both"),
    "stats not numbers": ({"--stats": "badstats.yaml"}, r"must be lists of numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, case):
    changes, message = BAD[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (tmp_path / "stats.yaml").write_text("mean: [0.4, 0.4, 0.4]\nstd: [0.2, 0.2, 0.2]\n")
    (tmp_path / "badstats.yaml").write_text("mean: 5\nstd: [1]\n")
    opts = {
        "IMAGE": str(IMAGES / "rgb_uint8.tif"),
        "--backbone": "dinov2_vits14",
        "--weights": str(TINY_V2),
        "--out": "f.pt",
        "--pca": "p.png",
        **changes,
    }
    for flag in ("--out", "--pca"):
        opts[flag] = str(out_dir / opts[flag])
    if "--stats" in opts:
        opts["--stats"] = str(tmp_path / opts["--stats"])
    arch = dict(a.split("=") for a in TINY_ARCH[1::2])
    if "--arch" in changes:
        key, value = changes["--arch"].split("=")
        arch[key] = value
    argv = ["features", opts.pop("IMAGE")]
    for flag, value in opts.items():
        if flag != "--arch":
            argv += [flag, value]
    for key, value in arch.items():
        argv += ["--arch", f"{key}={value}"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("densekit features: error: ")
    assert re.search(message, err), err
    assert list(out_dir.iterdir()) == []


def test_bad_input_through_the_console_script(tmp_path):
    res = run(
        "features",
        str(SAMPLE),
        "--backbone",
        "nope",
        "--weights",
        "random",
        "--out",
        str(tmp_path / "f.pt"),
    )
    assert res.returncode == 2 and "unknown backbone 'nope'" in res.stderr
    assert "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_failed_second_write_leaves_nothing(tmp_path, monkeypatch, capsys):
    """Outputs are all-or-nothing: if writing the PNG fails, the .pt is not left behind, and
    the failure is one line with exit status 1."""
    import errno

    import torchvision.io

    def boom(tensor, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torchvision.io, "write_png", boom)
    assert (
        main(
            [
                "features",
                str(TEST_DATA / "images" / "rgb_uint8.tif"),
                "--backbone",
                "dinov2_vits14",
                "--weights",
                str(TINY_V2),
                *TINY_ARCH,
                "--out",
                str(tmp_path / "f.pt"),
                "--pca",
                str(tmp_path / "p.png"),
            ]
        )
        == 1
    )
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"densekit features: error: {tmp_path / 'p.png'}: no space left on device"
    assert list(tmp_path.iterdir()) == []
