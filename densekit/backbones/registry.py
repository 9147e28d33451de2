"""The backbone registry: every supported architecture in one literal table.

Names follow the official key-layout files (``dino_vits8``, ``dinov2_vits14``,
``dinov3_vitl16_sat493m``, ...);
the official hub spellings (``dinov2_vits14_reg``) are accepted as aliases. Each entry records
what the rest of densekit needs to know about an architecture without building it: patch size,
widths, the layer sets heads use, which input normalisation and bands the weights expect, and the
official weight file names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from densekit.errors import UnknownNameError

Family = Literal["dino", "dino_resnet", "dinov2", "dinov3", "dinov3_convnext"]
FFN = Literal["mlp", "swiglu8", "swiglu64"]
LayerSet = Literal["last", "last4", "dpt"]

BackboneName = Literal[
    "dino_vits16",
    "dino_vits8",
    "dino_vitb16",
    "dino_vitb8",
    "dino_resnet50",
    "dinov2_vits14",
    "dinov2_vitb14",
    "dinov2_vitl14",
    "dinov2_vitg14",
    "dinov2_vits14_reg4",
    "dinov2_vitb14_reg4",
    "dinov2_vitl14_reg4",
    "dinov2_vitg14_reg4",
    "dinov3_vits16",
    "dinov3_vits16plus",
    "dinov3_vitb16",
    "dinov3_vitl16",
    "dinov3_vitl16_sat493m",
    "dinov3_vitl16plus",
    "dinov3_vith16plus",
    "dinov3_vit7b16",
    "dinov3_vit7b16_sat493m",
    "dinov3_convnext_tiny",
    "dinov3_convnext_small",
    "dinov3_convnext_base",
    "dinov3_convnext_large",
    "rad_dino",
    "densekit_vitt16",
]


@dataclass(frozen=True)
class Normalization:
    """Input statistics a set of weights was trained with.

    ``mean`` and ``std`` apply to pixel values scaled to [0, 1]; ``bands`` names what each input
    channel must hold, in order.
    """

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bands: tuple[str, ...]
    source: str


NORMALIZATIONS: dict[str, Normalization] = {
    "imagenet": Normalization(
        "imagenet",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        bands=("red", "green", "blue"),
        source="ImageNet statistics used by the DINO, DINOv2 and DINOv3 web (LVD) models",
    ),
    "sat493m": Normalization(
        "sat493m",
        mean=(0.430, 0.411, 0.296),
        std=(0.213, 0.156, 0.143),
        bands=("red", "green", "blue"),
        source="DINOv3 SAT-493M (Maxar RGB, 0.6 m) statistics",
    ),
    # From microsoft/rad-dino preprocessor_config.json (BitImageProcessor). When RAD-DINO is
    # loaded from its Hugging Face folder, the values in that folder's file are used instead.
    "rad_dino": Normalization(
        "rad_dino",
        mean=(0.5307, 0.5307, 0.5307),
        std=(0.2583, 0.2583, 0.2583),
        bands=("grey", "grey", "grey"),
        source="RAD-DINO chest X-ray statistics; the grey image repeated on three channels",
    ),
}


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry. ``embed_dim``/``depth`` describe the official architecture."""

    name: str
    family: Family
    timm_name: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    ffn: FFN
    ffn_ratio: float
    num_register_tokens: int
    img_size: int
    normalization: str
    num_params: int
    weight_files: tuple[str, ...]
    weight_urls: tuple[str, ...] = ()
    hf_ids: tuple[str, ...] = ()
    qkv_bias: bool = True
    untied_local_cls_norm: bool = False
    dpt_layers: tuple[int, ...] = ()
    # ConvNeXt only: channels and blocks per stage.
    dims: tuple[int, ...] = ()
    stage_depths: tuple[int, ...] = ()
    timm_kwargs: dict[str, object] = field(default_factory=dict)
    # A weights file shipped inside the package (densekit/weights/), loaded by "bundled".
    bundled_file: str = ""

    @property
    def is_vit(self) -> bool:
        return self.family in ("dino", "dinov2", "dinov3")

    @property
    def has_pos_embed(self) -> bool:
        """A learned position table of a fixed grid (DINO, DINOv2), interpolated to others."""
        return self.family in ("dino", "dinov2")

    def layer_set(self, which: LayerSet, depth: int | None = None) -> tuple[int, ...]:
        """Block indices (0-based) of a named layer set, for ``depth`` blocks if overridden."""
        n = self.depth if depth is None else depth
        if which == "last":
            return (n - 1,)
        if which == "last4":
            return tuple(range(max(0, n - 4), n))
        if which == "dpt":
            if depth is None or depth == self.depth:
                return self.dpt_layers
            return evenly_spaced_layers(n)
        raise ValueError(f"unknown layer set {which!r}; valid: 'last', 'last4', 'dpt'")


def evenly_spaced_layers(depth: int, count: int = 4) -> tuple[int, ...]:
    """``count`` block indices ending at the last block, evenly spaced: 12 -> (2, 5, 8, 11)."""
    if depth < count:
        return tuple(range(depth))
    return tuple(depth * (k + 1) // count - 1 for k in range(count))


_DINO_URL = "https://dl.fbaipublicfiles.com/dino/{stem}/{stem}.pth"
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{file}"
_DINOV3_URL = (
    "https://dl.fbaipublicfiles.com/dinov3/{arch}/{file}"  # gated: needs Meta's signed URL
)


def _dino(size: str, patch: int, dim: int, heads: int, params: int) -> BackboneSpec:
    """DINO (v1, 2021) ViT-S/B with patch 16 or 8: no registers, no LayerScale, no mask token."""
    timm_size = {"s": "small", "b": "base"}[size]
    stem = f"dino_{'deitsmall' if size == 's' else 'vitbase'}{patch}_pretrain"
    return BackboneSpec(
        name=f"dino_vit{size}{patch}",
        family="dino",
        timm_name=f"vit_{timm_size}_patch{patch}_224.dino",
        patch_size=patch,
        embed_dim=dim,
        depth=12,
        num_heads=heads,
        ffn="mlp",
        ffn_ratio=4.0,
        num_register_tokens=0,
        img_size=224,
        normalization="imagenet",
        num_params=params,
        weight_files=(f"{stem}.pth",),
        weight_urls=(_DINO_URL.format(stem=stem),),
        dpt_layers=(2, 5, 8, 11),
    )


def _dinov2(size: str, dim: int, depth: int, heads: int, params: int, reg: bool) -> BackboneSpec:
    arch = f"dinov2_vit{size}14"
    name = f"{arch}_reg4" if reg else arch
    timm_size = {"s": "small", "b": "base", "l": "large", "g": "giant"}[size]
    file = f"{name}_pretrain.pth"
    dpt = {"s": (2, 5, 8, 11), "b": (2, 5, 8, 11), "l": (4, 11, 17, 23), "g": (9, 19, 29, 39)}
    hf = f"facebook/dinov2-{'with-registers-' if reg else ''}{timm_size}"
    return BackboneSpec(
        name=name,
        family="dinov2",
        timm_name=f"vit_{timm_size}_patch14_{'reg4_' if reg else ''}dinov2",
        patch_size=14,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        ffn="swiglu8" if size == "g" else "mlp",
        ffn_ratio=4.0,
        num_register_tokens=4 if reg else 0,
        img_size=518,
        normalization="imagenet",
        num_params=params,
        weight_files=(file,),
        weight_urls=(_DINOV2_URL.format(arch=arch, file=file),),
        hf_ids=(hf,),
        dpt_layers=dpt[size],
    )


def _dinov3(
    name: str,
    *,
    timm: str,
    dim: int,
    depth: int,
    heads: int,
    ffn: FFN,
    ratio: float,
    params: int,
    files: tuple[str, ...],
    dpt: tuple[int, ...],
    norm: str = "imagenet",
    qkv_bias: bool = True,
    untied: bool = False,
    timm_kwargs: dict[str, object] | None = None,
) -> BackboneSpec:
    arch = name.replace("_sat493m", "")
    return BackboneSpec(
        name=name,
        family="dinov3",
        timm_name=timm,
        patch_size=16,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        ffn=ffn,
        ffn_ratio=ratio,
        num_register_tokens=4,
        img_size=224,
        normalization=norm,
        num_params=params,
        weight_files=files,
        weight_urls=tuple(_DINOV3_URL.format(arch=arch, file=f) for f in files),
        hf_ids=tuple(
            "facebook/" + f.split("-")[0].replace("_pretrain_", "-pretrain-").replace("_", "-")
            for f in files
        ),
        qkv_bias=qkv_bias,
        untied_local_cls_norm=untied,
        dpt_layers=dpt,
        timm_kwargs=timm_kwargs or {},
    )


def _convnext(size: str, dims: tuple[int, ...], depths: tuple[int, ...], params: int, h: str):
    name = f"dinov3_convnext_{size}"
    file = f"{name}_pretrain_lvd1689m-{h}.pth"
    return BackboneSpec(
        name=name,
        family="dinov3_convnext",
        timm_name=f"convnext_{size}",
        patch_size=32,
        embed_dim=dims[-1],
        depth=4,
        num_heads=0,
        ffn="mlp",
        ffn_ratio=4.0,
        num_register_tokens=0,
        img_size=224,
        normalization="imagenet",
        num_params=params,
        weight_files=(file,),
        weight_urls=(_DINOV3_URL.format(arch=name, file=file),),
        hf_ids=(f"facebook/dinov3-convnext-{size}-pretrain-lvd1689m",),
        dpt_layers=(0, 1, 2, 3),
        dims=dims,
        stage_depths=depths,
    )


_S3 = (2, 5, 8, 11)
_L3 = (4, 11, 17, 23)

# One literal table, name -> entry (a test checks that each key is its entry's name).
# fmt: off
REGISTRY: dict[str, BackboneSpec] = {
    "dino_vits16": _dino("s", 16, 384, 6, 21_665_664),
    "dino_vits8": _dino("s", 8, 384, 6, 21_670_272),
    "dino_vitb16": _dino("b", 16, 768, 12, 85_798_656),
    "dino_vitb8": _dino("b", 8, 768, 12, 85_807_872),
    # DINO's ResNet-50: torchvision's layout without fc (timm's resnet50 is the same module);
    # "layers" are its four stages (strides 4, 8, 16, 32), as for the ConvNeXt entries.
    "dino_resnet50": BackboneSpec(
        name="dino_resnet50", family="dino_resnet", timm_name="resnet50", patch_size=32,
        embed_dim=2048, depth=4, num_heads=0, ffn="mlp", ffn_ratio=4.0, num_register_tokens=0,
        img_size=224, normalization="imagenet", num_params=23_508_032,
        weight_files=("dino_resnet50_pretrain.pth",),
        weight_urls=(_DINO_URL.format(stem="dino_resnet50_pretrain"),), dpt_layers=(0, 1, 2, 3),
        dims=(256, 512, 1024, 2048), stage_depths=(3, 4, 6, 3),
    ),
    "dinov2_vits14": _dinov2("s", 384, 12, 6, 22_056_576, reg=False),
    "dinov2_vitb14": _dinov2("b", 768, 12, 12, 86_580_480, reg=False),
    "dinov2_vitl14": _dinov2("l", 1024, 24, 16, 304_368_640, reg=False),
    "dinov2_vitg14": _dinov2("g", 1536, 40, 24, 1_136_480_768, reg=False),
    "dinov2_vits14_reg4": _dinov2("s", 384, 12, 6, 22_058_112, reg=True),
    "dinov2_vitb14_reg4": _dinov2("b", 768, 12, 12, 86_583_552, reg=True),
    "dinov2_vitl14_reg4": _dinov2("l", 1024, 24, 16, 304_372_736, reg=True),
    "dinov2_vitg14_reg4": _dinov2("g", 1536, 40, 24, 1_136_486_912, reg=True),
    "dinov3_vits16": _dinov3(
        "dinov3_vits16", timm="vit_small_patch16_dinov3_qkvb", dim=384, depth=12, heads=6,
        ffn="mlp", ratio=4.0, params=21_601_152, dpt=_S3,
        files=("dinov3_vits16_pretrain_lvd1689m-08c60483.pth",),
    ),
    "dinov3_vits16plus": _dinov3(
        "dinov3_vits16plus", timm="vit_small_plus_patch16_dinov3_qkvb", dim=384, depth=12,
        heads=6, ffn="swiglu8", ratio=6.0, params=28_697_472, dpt=_S3,
        files=("dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",),
    ),
    "dinov3_vitb16": _dinov3(
        "dinov3_vitb16", timm="vit_base_patch16_dinov3_qkvb", dim=768, depth=12, heads=12,
        ffn="mlp", ratio=4.0, params=85_669_632, dpt=_S3,
        files=("dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",),
    ),
    "dinov3_vitl16": _dinov3(
        "dinov3_vitl16", timm="vit_large_patch16_dinov3_qkvb", dim=1024, depth=24, heads=16,
        ffn="mlp", ratio=4.0, params=303_154_176, dpt=_L3,
        files=("dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",),
    ),
    "dinov3_vitl16_sat493m": _dinov3(
        "dinov3_vitl16_sat493m", timm="vit_large_patch16_dinov3_qkvb", dim=1024, depth=24,
        heads=16, ffn="mlp", ratio=4.0, params=303_156_224, dpt=_L3, norm="sat493m",
        untied=True, files=("dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth",),
    ),
    # No timm definition exists: the ViT-L/16 DINOv3 model with SwiGLU (align 8) has the same
    # layout (checked key by key against the official list in the tests).
    "dinov3_vitl16plus": _dinov3(
        "dinov3_vitl16plus", timm="vit_large_patch16_dinov3_qkvb", dim=1024, depth=24,
        heads=16, ffn="swiglu8", ratio=6.0, params=403_915_776, dpt=_L3,
        files=("dinov3_vitl16plus_pretrain_lvd1689m-46503df0.pth",),
        timm_kwargs={"swiglu_mlp": True, "swiglu_align_to": 8},
    ),
    "dinov3_vith16plus": _dinov3(
        "dinov3_vith16plus", timm="vit_huge_plus_patch16_dinov3_qkvb", dim=1280, depth=32,
        heads=20, ffn="swiglu8", ratio=6.0, params=840_633_600, dpt=(7, 15, 23, 31),
        files=("dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth",),
    ),
    "dinov3_vit7b16": _dinov3(
        "dinov3_vit7b16", timm="vit_7b_patch16_dinov3", dim=4096, depth=40, heads=32,
        ffn="swiglu64", ratio=3.0, params=6_716_043_264, dpt=(9, 19, 29, 39), qkv_bias=False,
        untied=True, files=("dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth",),
    ),
    "dinov3_vit7b16_sat493m": _dinov3(
        "dinov3_vit7b16_sat493m", timm="vit_7b_patch16_dinov3", dim=4096, depth=40, heads=32,
        ffn="swiglu64", ratio=3.0, params=6_716_043_264, dpt=(9, 19, 29, 39), qkv_bias=False,
        untied=True, norm="sat493m", files=("dinov3_vit7b16_pretrain_sat493m-a6675841.pth",),
    ),
    "dinov3_convnext_tiny": _convnext(
        "tiny", (96, 192, 384, 768), (3, 3, 9, 3), 27_820_128, "21b726bb"),
    "dinov3_convnext_small": _convnext(
        "small", (96, 192, 384, 768), (3, 3, 27, 3), 49_454_688, "296db49d"),
    "dinov3_convnext_base": _convnext(
        "base", (128, 256, 512, 1024), (3, 3, 27, 3), 87_566_464, "801f2ba9"),
    "dinov3_convnext_large": _convnext(
        "large", (192, 384, 768, 1536), (3, 3, 27, 3), 196_230_336, "61fa432d"),
    # RAD-DINO: a DINOv2 ViT-B/14 (no registers) continued on chest X-rays.
    "rad_dino": BackboneSpec(
        name="rad_dino", family="dinov2", timm_name="vit_base_patch14_dinov2", patch_size=14,
        embed_dim=768, depth=12, num_heads=12, ffn="mlp", ffn_ratio=4.0,
        num_register_tokens=0, img_size=518, normalization="rad_dino", num_params=86_580_480,
        weight_files=("model.safetensors", "backbone_compatible.safetensors"),
        hf_ids=("microsoft/rad-dino",), dpt_layers=_S3,
    ),
    # densekit's own ViT-Tiny/16 in the DINOv2 layout, pretrained with `densekit pretrain` on
    # redistributable imagery and shipped in the package (card: densekit/weights/README.md).
    "densekit_vitt16": BackboneSpec(
        name="densekit_vitt16", family="dinov2", timm_name="vit_small_patch14_dinov2",
        patch_size=16, embed_dim=192, depth=12, num_heads=3, ffn="mlp", ffn_ratio=4.0,
        num_register_tokens=0, img_size=224, normalization="imagenet", num_params=5_529_216,
        weight_files=("densekit_vitt16.pth",), dpt_layers=_S3,
        timm_kwargs={"patch_size": 16}, bundled_file="densekit_vitt16.pth",
    ),
}
# fmt: on

ALIASES: dict[str, str] = {
    "dinov2_vits14_reg": "dinov2_vits14_reg4",
    "dinov2_vitb14_reg": "dinov2_vitb14_reg4",
    "dinov2_vitl14_reg": "dinov2_vitl14_reg4",
    "dinov2_vitg14_reg": "dinov2_vitg14_reg4",
    "rad-dino": "rad_dino",
    "microsoft/rad-dino": "rad_dino",
}


def get_spec(name: str) -> BackboneSpec:
    """Look a backbone up by registry name or alias; unknown names list the valid ones."""
    key = ALIASES.get(name, name)
    if key not in REGISTRY:
        valid = ", ".join(sorted(REGISTRY))
        aliases = ", ".join(sorted(ALIASES))
        raise UnknownNameError(
            f"unknown backbone {name!r}; valid names: {valid} (aliases: {aliases})"
        )
    return REGISTRY[key]
