"""Meta's released heads inside a DenseModel: the same numbers as Meta's module, pixels in place,
checkpoints of `densekit import-head`, and configs that cannot work refused by name."""

from __future__ import annotations

import pytest
import torch
from official_heads import needs_head_fixtures, tiny_head

from densekit.cli import main
from densekit.errors import DensekitError
from densekit.models import DenseModel
from densekit.tasks import DepthTask, SegmentationTask

CHMV2 = "dinov3_vits16_tiny_chmv2_dpt_head_tiny"
SEG = "dinov3_vits16plus_tiny_linear_seg_head_tiny"
DINOV2_DPT = "dinov2_vits14_tiny_nyu_dpt_head_tiny"
SCALE = 1 / 255


def task_args(name: str) -> dict:
    t = tiny_head(name)
    official = {"kind": t.kind, "weights": str(t.path), "layers": t.layers}
    if t.depth_range is not None:
        official["depth_range"] = list(t.depth_range)
    return {
        "backbone": t.backbone,
        "weights": str(t.backbone_weights),
        "backbone_overrides": t.overrides,
        "head": "official",
        "official_head": official,
        "scale": SCALE,
    }


def depth_model(name: str = CHMV2) -> DenseModel:
    needs_head_fixtures()
    return DepthTask(**task_args(name)).model.eval()


def raw_padding(model: DenseModel) -> torch.Tensor:
    """Raw band values that normalise to 0 (what the centre padding adds)."""
    return (model.input_mean / model.input_scale).view(1, -1, 1, 1)


@pytest.mark.parametrize("name", [CHMV2, DINOV2_DPT, SEG])
@pytest.mark.parametrize("size", [(112, 224), (100, 120)])
def test_dense_model_gives_metas_values_on_the_input_pixels(name, size):
    needs_head_fixtures()
    t = tiny_head(name)
    task = SegmentationTask if name == SEG else DepthTask
    extra = {"num_classes": 7} if name == SEG else {}  # the fixture's classes
    model = task(**task_args(name), **extra).model.eval()
    meta = t.load()
    torch.manual_seed(0)
    x = torch.rand(2, 3, *size) * 255
    with torch.no_grad():
        ours = model(x)
        theirs = meta(model.normalize(x))
    if name == DINOV2_DPT and size == (100, 120):
        # Meta stretches the padded image's prediction over the input; densekit crops it
        with pytest.raises(DensekitError, match="cannot be put back exactly"):
            meta.to_input_size(theirs, size)
        return
    expected = meta.to_input_size(theirs, size) if name == CHMV2 else theirs
    assert ours.shape == (2, meta.num_outputs, *size)
    assert torch.equal(ours, expected)


def test_centre_padding_puts_pixels_in_place():
    """A 100 x 120 input is centre-padded to 112 x 128 (6 rows and 4 columns before it): its
    prediction must equal that of the padded image given whole, cropped at (6, 4)."""
    model = depth_model()
    torch.manual_seed(1)
    x = torch.rand(1, 3, 100, 120) * 255
    padded = raw_padding(model).expand(1, 3, 112, 128).clone()
    padded[..., 6:106, 4:124] = x
    with torch.no_grad():
        small, whole = model(x), model(padded)
    assert (small - whole[..., 6:106, 4:124]).abs().max() < 1e-4
    assert (small - whole[..., :100, :120]).abs().max() > 1e-3  # a corner crop would be wrong


def test_head_grid_is_resized_to_the_padded_input_then_cropped(monkeypatch):
    """The DPT grid covers the centre-padded input: a grid holding each cell's column centre
    (in padded pixels) must come out as each output pixel's own column centre."""
    model = depth_model()
    head = model.head
    size, patch = (100, 120), 16  # padded 112 x 128: 7 x 8 patches, grid 128 x 128
    gh, gw = head.meta_size(size, patch)
    assert (gh, gw) == (128, 128)
    cols = (torch.arange(gw, dtype=torch.float32) + 0.5) * 128 / gw
    grid = cols.view(1, 1, 1, gw).expand(1, 1, gh, gw)
    out = head.in_place(grid, size, patch)
    want = torch.arange(120, dtype=torch.float32) + 0.5 + 4  # 4 padded columns on the left
    assert out.shape == (1, 1, 100, 120)
    assert torch.allclose(out[0, 0, 50, 1:-1], want[1:-1], atol=1e-4)


def test_import_head_writes_a_checkpoint_that_needs_no_head_file(tmp_path, capsys):
    needs_head_fixtures()
    t = tiny_head(CHMV2)
    head_copy = tmp_path / "chmv2_head.pth"
    head_copy.write_bytes(t.path.read_bytes())
    ckpt = tmp_path / "chm.ckpt"
    arch = [a for k, v in t.overrides.items() for a in ("--arch", f"{k}={v}")]
    argv = ["import-head", "--kind", "dinov3_chmv2", "--head", str(head_copy)]
    argv += ["--backbone", t.backbone, "--weights", str(t.backbone_weights), "--out", str(ckpt)]
    argv += ["--layers", ",".join(map(str, t.layers)), *arch]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "DINOv3 License" in out and "densekit tile --checkpoint" in out
    stored = torch.load(ckpt, weights_only=True)
    record = stored["densekit"]["official_head"]
    assert record["licence"] == "DINOv3 License"
    assert record["sha256"] == t.meta["sha256"][t.path.name]
    assert not any(k.startswith("model.backbone.") for k in stored["state_dict"])
    head_copy.unlink()  # the head's tensors are in the checkpoint
    model = DenseModel.from_checkpoint(ckpt)
    assert model.record("DepthTask")["official_head"]["sha256"] == record["sha256"]
    assert model.output.unit == "m" and model.output.description == "canopy_height"
    assert model.inputs.bands == (1, 2, 3) and model.inputs.scale == pytest.approx(SCALE)
    meta = t.load()
    x = torch.rand(1, 3, 96, 112) * 255
    with torch.no_grad():
        expected = meta.to_input_size(meta(model.normalize(x)), (96, 112))
        assert torch.equal(model(x), expected)


def test_import_head_refuses_bad_input(tmp_path, capsys):
    needs_head_fixtures()
    t = tiny_head(SEG)
    base = ["import-head", "--head", str(t.path), "--backbone", t.backbone]
    base += ["--weights", str(t.backbone_weights), "--out", str(tmp_path / "x.ckpt")]
    arch = [a for k, v in t.overrides.items() for a in ("--arch", f"{k}={v}")]
    assert main([*base, "--kind", "dinov3_chmv2", *arch]) == 2
    assert "looks like a dinov3_linear_seg head" in capsys.readouterr().err
    assert main([*base, "--kind", "dinov3_linear_seg", "--bands", "1,2", *arch]) == 2
    assert "3 bands" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()


def test_configs_that_cannot_work_are_refused_by_name():
    needs_head_fixtures()
    args = task_args(CHMV2)
    with pytest.raises(DensekitError, match=r"predicts depth; use densekit\.tasks\.DepthTask"):
        SegmentationTask(num_classes=2, **args)
    with pytest.raises(DensekitError, match="head_grid"):
        DepthTask(**args, head_grid={"lr": [1e-3]})
    with pytest.raises(DensekitError, match="feature_cache"):
        DepthTask(**args, feature_cache="cache")
    with pytest.raises(DensekitError, match=r"official_head\.layers"):
        DepthTask(**{**args, "layers": "dpt"})
    with pytest.raises(DensekitError, match=r"needs head: official"):
        DepthTask(**{**args, "head": "dpt"})
    with pytest.raises(DensekitError, match=r"unknown key.*'range'"):
        DepthTask(**{**args, "official_head": {**args["official_head"], "range": [0, 1]}})
    seg = task_args(SEG)
    with pytest.raises(DensekitError, match=r"outputs 7 classes.*set the task's num_classes to 7"):
        SegmentationTask(num_classes=3, **seg)
