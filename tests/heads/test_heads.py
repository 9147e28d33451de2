"""Every head passes the same checks: shapes at odd input sizes, a backward pass, and no
gradient reaching the frozen backbone. Each head's test is a short subclass of HeadTester."""

import pytest
import torch
from helpers import load_tiny

from densekit import load_backbone
from densekit.errors import DensekitError
from densekit.heads import ChangeFusion, DepthOutput, DPTHead, LinearHead
from densekit.heads.refine import upsample_to

SIZES = [(1, 45, 61), (2, 30, 100), (1, 14, 14)]


class HeadTester:
    """Subclasses set ``layers`` and implement ``make_head(backbone)``."""

    layers: object = "last"
    outputs = 3
    fusion: ChangeFusion | None = None

    @pytest.fixture(scope="class")
    def backbone(self):
        return load_tiny("dinov2_vits14_tiny", layers=self.layers)

    def make_head(self, backbone):
        raise NotImplementedError

    def run(self, backbone, head, x):
        pairs = backbone.forward_with_class_tokens(x)
        maps, tokens = [m for m, _ in pairs], [c for _, c in pairs]
        if self.fusion is not None:
            maps, tokens = self.fusion(maps, maps), self.fusion(tokens, tokens)
        return upsample_to(head(maps, tokens), x.shape[-2:], backbone.patch_size)

    @pytest.mark.parametrize(("b", "h", "w"), SIZES)
    def test_output_shape_at_odd_sizes(self, backbone, b, h, w):
        head = self.make_head(backbone).eval()  # BatchNorm: one 14 x 14 image is one value
        out = self.run(backbone, head, torch.randn(b, 3, h, w))
        assert out.shape == (b, self.outputs, h, w)
        assert torch.isfinite(out).all()

    def test_backward_trains_the_head_only(self, backbone):
        head = self.make_head(backbone)
        out = self.run(backbone, head, torch.randn(2, 3, 40, 52))
        out.square().mean().backward()
        grads = [p.grad for p in head.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
        assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())


class TestLinearHead(HeadTester):
    def make_head(self, backbone):
        return LinearHead(backbone.out_channels, self.outputs, dropout=0.1)


class TestLinearHeadOnLastFour(HeadTester):
    layers = "last4"

    def make_head(self, backbone):
        head = LinearHead(backbone.out_channels, self.outputs)
        assert head.conv.in_channels == 4 * 64
        return head


class TestDPTSegmentation(HeadTester):
    layers = "dpt"

    def make_head(self, backbone):
        return DPTHead(backbone.out_channels, backbone.strides, self.outputs, features=32)


class TestDPTDepthBins(HeadTester):
    layers = "dpt"
    outputs = 16

    def make_head(self, backbone):
        return DPTHead(backbone.out_channels, backbone.strides, 16, kind="depth", features=32)


class TestLinearOnConcatenatedDates(HeadTester):
    fusion = ChangeFusion("concat")

    def make_head(self, backbone):
        return LinearHead(self.fusion.out_channels(backbone.out_channels), self.outputs)


class TestDPTOnDifferenceOfDates(HeadTester):
    layers = "dpt"
    fusion = ChangeFusion("absdiff")

    def make_head(self, backbone):
        return DPTHead(
            self.fusion.out_channels(backbone.out_channels), backbone.strides, 3, features=32
        )


class TestDPTOnConvNeXt(HeadTester):
    layers = (0, 1, 2, 3)

    @pytest.fixture(scope="class")
    def backbone(self):
        with pytest.warns(UserWarning, match="RANDOM"):
            return load_backbone(
                "dinov3_convnext_tiny",
                "random",
                layers=[0, 1, 2, 3],
                dims=(8, 16, 24, 32),
                depths=(1, 1, 1, 1),
            )

    def make_head(self, backbone):
        return DPTHead(backbone.out_channels, backbone.strides, 3, features=16, readout="ignore")

    @pytest.mark.parametrize(("b", "h", "w"), [(1, 45, 61), (2, 33, 100), (1, 32, 32)])
    def test_output_shape_at_odd_sizes(self, backbone, b, h, w):
        super().test_output_shape_at_odd_sizes(backbone, b, h, w)


def test_dpt_needs_four_layers():
    with pytest.raises(DensekitError, match=r"DPT needs four layers, got 1"):
        DPTHead([64], [14], 2)


def test_dpt_readout_uses_the_class_token():
    bb = load_tiny("dinov2_vits14_tiny", layers="dpt")
    head = DPTHead(bb.out_channels, bb.strides, 2, features=16).eval()
    pairs = bb.forward_with_class_tokens(torch.randn(1, 3, 28, 28))
    maps, tokens = [m for m, _ in pairs], [c for _, c in pairs]
    a = head(maps, tokens)
    b = head(maps, [t + 1 for t in tokens])
    assert not torch.allclose(a, b)


def test_fusion_modes():
    a, b = [torch.ones(1, 2, 3, 3)], [torch.full((1, 2, 3, 3), 3.0)]
    assert (ChangeFusion("diff")(a, b)[0] == 2).all()
    assert (ChangeFusion("absdiff")(b, a)[0] == 2).all()
    assert ChangeFusion("concat")(a, b)[0].shape == (1, 4, 3, 3)
    assert ChangeFusion("concat").out_channels([2, 5]) == [4, 10]


def test_depth_output_modes():
    x = torch.zeros(1, 4, 2, 2)
    bins = DepthOutput("bins", num_bins=4, spacing="linear", min_depth=1.0, max_depth=4.0)
    assert torch.allclose(bins(x), torch.full((1, 1, 2, 2), 2.5))  # uniform -> mean centre
    log_bins = DepthOutput("bins", num_bins=3, spacing="log", min_depth=1.0, max_depth=100.0)
    assert torch.allclose(log_bins.centres.flatten(), torch.tensor([1.0, 10.0, 100.0]))
    reg = DepthOutput("regression", min_depth=0.5)
    assert torch.equal(reg(torch.tensor([[[[-3.0, 2.0]]]])), torch.tensor([[[[0.5, 2.5]]]]))
