"""``load_backbone``: a registry name plus weights -> a frozen :class:`Backbone`.

The loading path for real weights is always the same, whatever the source:

1. read the file without running code from it, into Meta's official key layout (Hugging Face
   files are renamed, see :mod:`densekit.backbones.hf`);
2. read the architecture off the tensors and compare it with the named one: a file of another
   architecture fails here, naming the registry entry it belongs to;
3. convert to timm's layout with the timm model module's own ``checkpoint_filter_fn``, check that
   every official tensor is accounted for (only the known eval-unused ones may be dropped) and load
   with ``strict=True``;
4. DINOv3: check the qkv ``bias_mask`` and restore the checkpoint's RoPE periods.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from timm.models import adapt_input_conv
from timm.models import convnext as timm_convnext
from timm.models import eva as timm_eva
from timm.models import vision_transformer as timm_vit
from torch import Tensor, nn

from densekit.backbones.arch import Arch, build_timm_model, resolve_arch
from densekit.backbones.base import Backbone, WeightsInfo
from densekit.backbones.checkpoint import (
    StateDict,
    identify,
    load_safetensors_file,
    load_torch_file,
    official_owner_of_filename,
    signature_of_arch,
    signature_of_state_dict,
)
from densekit.backbones.convnext import DinoConvNeXt
from densekit.backbones.hf import hf_to_official, hf_weights_file, is_hf_layout, read_hf_folder
from densekit.backbones.layout import layout_differences, official_layout
from densekit.backbones.registry import (
    NORMALIZATIONS,
    REGISTRY,
    BackboneSpec,
    LayerSet,
    Normalization,
    get_spec,
)
from densekit.backbones.resnet import DinoResNet
from densekit.backbones.vit import DinoViT
from densekit.errors import DensekitError, WeightsError

LayerChoice = str | Sequence[int]


def load_backbone(
    name: str,
    weights: str | Path,
    *,
    layers: LayerChoice = "last4",
    in_chans: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    **arch_overrides: Any,
) -> Backbone:
    """Build a frozen backbone from the registry and load its weights strictly.

    Args:
        name: registry name or alias (``densekit backbones`` lists them).
        weights: a local official ``.pth``; a Hugging Face folder or ``.safetensors`` file (needs
            the ``hf`` extra); ``"official"`` to download the published file (or a URL, or a
            Hugging Face id such as ``"hf:microsoft/rad-dino"``) when online; or ``"random"`` for
            random weights (with a warning). Required: there is no silent default.
        layers: ``"last"``, ``"last4"``, ``"dpt"`` or block/stage indices returned by ``forward``.
        in_chans: opt-in for inputs with other than 3 channels: the patch embedding's RGB kernels
            are repeated cyclically and scaled by ``3 / in_chans`` (timm's ``adapt_input_conv``).
            The result needs statistics for the new bands (``normalization`` becomes None).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the forward under autocast.
        device: where to put the module.
        **arch_overrides: ``embed_dim``, ``depth``, ``num_heads``, ``img_size`` and
            ``mlp_ratio`` (DINO, DINOv2) / ``ffn_ratio`` (DINOv3); ``dims``/``depths``
            (ConvNeXt); none for the ResNet-50.

    Raises:
        UnknownNameError: unknown backbone name (the message lists the valid ones).
        WeightsError: missing or unreadable weights, or weights of another architecture.
    """
    spec = get_spec(name)
    overrides = dict(arch_overrides)
    normalization: Normalization | None = NORMALIZATIONS[spec.normalization]
    periods: Tensor | None = None
    if str(weights) == "random":
        arch = resolve_arch(spec, overrides)
        warnings.warn(
            f"{spec.name}: using RANDOM weights (weights='random'); features carry no learned "
            "information",
            UserWarning,
            stacklevel=2,
        )
        model = build_timm_model(arch)
        info = WeightsInfo(source="random")
    else:
        path, source = resolve_weights(spec, str(weights))
        sd, hf_config, from_hf = read_weights(path)
        if hf_config is not None:
            normalization = _hf_normalization(hf_config, normalization, spec)
        if spec.has_pos_embed and "pos_embed" in sd:
            overrides.setdefault("img_size", checkpoint_img_size(sd, spec, path))
        arch = resolve_arch(spec, overrides)
        check_weights_fit(arch, sd, path, overrides, from_hf=from_hf)
        heads = (hf_config or {}).get("num_attention_heads", arch.num_heads)
        if heads != arch.num_heads:
            raise WeightsError(
                f"{path}: config.json has num_attention_heads {heads}, {spec.name} as built "
                f"has {arch.num_heads}"
            )
        model = build_timm_model(arch)
        periods = load_official_state_dict(model, arch, sd, str(path))
        file = hf_weights_file(path) if path.is_dir() else path
        info = WeightsInfo(source=source, path=str(file.resolve()))
    backbone = _wrap(
        arch,
        model,
        resolve_layers(spec, arch, layers),
        info,
        normalization,
        autocast_dtype,
        periods,
    )
    if in_chans is not None and in_chans != backbone.in_chans:
        _adapt_in_chans(backbone, in_chans)
        backbone.normalization = None
    if device is not None:
        backbone.to(device)
    return backbone


def _wrap(
    arch: Arch,
    model: nn.Module,
    layers: Sequence[int],
    info: WeightsInfo,
    normalization: Normalization | None,
    autocast_dtype: torch.dtype | None,
    periods: Tensor | None,
) -> Backbone:
    if arch.spec.is_vit:
        return DinoViT(arch, model, layers, info, normalization, autocast_dtype, periods)
    if arch.spec.family == "dino_resnet":
        return DinoResNet(arch, model, layers, info, normalization, autocast_dtype)
    return DinoConvNeXt(arch, model, layers, info, normalization, autocast_dtype)


def resolve_layers(spec: BackboneSpec, arch: Arch, layers: LayerChoice) -> tuple[int, ...]:
    if isinstance(layers, str):
        if layers not in ("last", "last4", "dpt"):
            raise DensekitError(
                f"unknown layer set {layers!r}; valid: 'last', 'last4', 'dpt' or a list of "
                f"indices 0..{arch.depth - 1}"
            )
        return spec.layer_set(cast(LayerSet, layers), depth=arch.depth)
    return tuple(int(i) for i in layers)


# -- finding and reading the weights ---------------------------------------------------------
def resolve_weights(spec: BackboneSpec, weights: str) -> tuple[Path, str]:
    """A local path for ``weights`` (downloading when it names a remote source)."""
    if not weights.strip():
        raise WeightsError(f"{spec.name}: weights is empty; give a file, a folder or 'random'")
    path = Path(weights).expanduser()
    if path.exists():
        return path, "hf" if path.is_dir() or path.suffix == ".safetensors" else "official"
    if weights == "bundled" or (weights == "official" and spec.bundled_file):
        return bundled_weights(spec), "bundled"
    if weights == "official":
        if spec.weight_urls:
            return _download(spec.weight_urls[0], spec), "official"
        return _hf_download(spec.hf_ids[0], spec), "hub"
    if weights.startswith(("http://", "https://")):
        return _download(weights, spec), "url"
    if weights.startswith("hf:"):
        return _hf_download(weights[3:], spec), "hub"
    raise WeightsError(
        f"weights {weights!r} for {spec.name}: no such file or folder. Give a local official "
        f".pth (e.g. {spec.weight_files[0]}), a Hugging Face folder or .safetensors file, "
        "'official', a URL or 'hf:<org>/<name>' to download, 'bundled' (densekit_vitt16), "
        "or 'random'"
    )


BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"


def bundled_weights(spec: BackboneSpec) -> Path:
    """The weights file shipped inside the package for ``spec``."""
    if not spec.bundled_file:
        names = [s.name for s in REGISTRY.values() if s.bundled_file]
        raise WeightsError(
            f"weights 'bundled': densekit ships no weights for {spec.name}; bundled "
            f"backbones: {names}"
        )
    path = BUNDLED_DIR / spec.bundled_file
    if not path.is_file():
        raise WeightsError(
            f"{spec.name}: the bundled weights file {path} is missing from this installation; "
            "reinstall densekit"
        )
    return path


def _download(url: str, spec: BackboneSpec) -> Path:
    dest = Path(torch.hub.get_dir()) / "checkpoints" / url.split("/")[-1].split("?")[0]
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(dest), progress=True)
        except Exception as e:
            raise WeightsError(
                f"could not download the {spec.name} weights from {url} ({e}). DINOv3 files "
                "need the signed URL Meta e-mails after a request; offline, download the file "
                "elsewhere and pass its path"
            ) from None
    return dest


def _hf_download(repo_id: str, spec: BackboneSpec) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise WeightsError(
            "downloading from Hugging Face needs: pip install 'densekit[hf]'"
        ) from None
    try:
        folder = snapshot_download(
            repo_id,
            allow_patterns=["config.json", "model.safetensors", "preprocessor_config.json"],
        )
    except Exception as e:
        raise WeightsError(
            f"could not download {repo_id!r} for {spec.name} from Hugging Face ({e}); offline, "
            "download the folder elsewhere and pass its path"
        ) from None
    return Path(folder)


def read_weights(path: Path) -> tuple[StateDict, dict | None, bool]:
    """State dict in the official layout, the HF config (folders only), and whether the source
    was in Hugging Face layout."""
    if path.is_dir():
        sd, folder_config = read_hf_folder(path)
        return sd, folder_config, True
    sd = load_safetensors_file(path) if path.suffix == ".safetensors" else load_torch_file(path)
    if not is_hf_layout(sd):
        return sd, None, False
    config_path = path.parent / "config.json"
    config: dict | None = json.loads(config_path.read_text()) if config_path.is_file() else None
    return hf_to_official(sd, config, source=str(path)), None, True


def _hf_normalization(
    config: dict, default: Normalization | None, spec: BackboneSpec
) -> Normalization | None:
    proc = config.get("_preprocessor") or {}
    mean, std = proc.get("image_mean"), proc.get("image_std")
    if default is None or mean is None or std is None:
        return default
    if (tuple(mean), tuple(std)) == (default.mean, default.std):
        return default
    return Normalization(
        f"{spec.name}-preprocessor",
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        bands=default.bands,
        source="preprocessor_config.json of the Hugging Face folder",
    )


def checkpoint_img_size(sd: StateDict, spec: BackboneSpec, path: Path) -> int:
    """DINO, DINOv2: the image size of the checkpoint's position-embedding grid."""
    pos = sd.get("pos_embed")
    if pos is None:
        raise WeightsError(
            f"{path}: no pos_embed, so not a {spec.family} checkpoint for {spec.name}"
        )
    n = pos.shape[1] - 1
    grid = math.isqrt(n)
    if grid * grid != n:
        raise WeightsError(f"{path}: pos_embed has {n} patch positions, not a square grid")
    return grid * spec.patch_size


def check_weights_fit(
    arch: Arch, sd: StateDict, path: Path, overrides: dict[str, Any], from_hf: bool = False
) -> None:
    """Fail, naming the right registry entry where one fits, if ``sd`` is not ``arch``'s.

    Hugging Face files never hold ``local_cls_norm`` (unused in eval), so it is not required
    from them.
    """
    spec = arch.spec
    owner = official_owner_of_filename(path)
    if owner is not None and owner != spec.name:
        raise WeightsError(
            f"{path.name} is the official weight file of {owner}, not {spec.name}; load it as "
            f"{owner!r} (its normalisation and layers differ)"
        )
    got = signature_of_state_dict(sd)
    if got is None:
        raise WeightsError(
            f"{path}: not a DINO backbone state dict (no patch_embed/cls_token or ConvNeXt "
            f"stem); first keys: {list(sd)[:8]}"
        )
    want = signature_of_arch(arch)
    if from_hf:
        got = dataclasses.replace(got, local_cls_norm=want.local_cls_norm)
    if got.in_chans != want.in_chans:
        raise WeightsError(
            f"{path}: patch embedding takes {got.in_chans} channels; official {spec.name} "
            "weights take 3 (for more input bands, load the RGB weights with in_chans=N)"
        )
    if got != want:
        owners = identify(got)
        if owners:
            where = f"; it fits {', '.join(owners)}"
        elif dataclasses.replace(got, local_cls_norm=want.local_cls_norm) == want:
            where = ""  # only local_cls_norm differs: the layout check below names the keys
        else:
            where = (
                "; no registry entry has this layout: for a smaller or custom model of the same "
                f"family pass architecture overrides (embed_dim={got.embed_dim}, "
                f"depth={got.depth}, and num_heads)"
            )
        if where:
            raise WeightsError(
                f"{path}: weights do not fit {spec.name} ({want.describe()}); the file has "
                f"{got.describe()}{where}"
            )
    expected = official_layout(arch)
    if from_hf:
        expected = {k: v for k, v in expected.items() if not k.startswith("local_cls_norm.")}
    diffs = layout_differences(expected, {k: tuple(v.shape) for k, v in sd.items()})
    if diffs and not (spec.has_pos_embed and _only_pos_embed_differs(diffs)):
        raise WeightsError(
            f"{path}: not the official layout of {spec.name} ({arch.describe()}): "
            + "; ".join(diffs)
        )
    if "img_size" in overrides and spec.has_pos_embed:
        grid_px = checkpoint_img_size(sd, spec, path)
        if int(overrides["img_size"]) != grid_px:
            raise WeightsError(
                f"{path}: pos_embed grid is {grid_px // spec.patch_size}x"
                f"{grid_px // spec.patch_size} (img_size {grid_px}); img_size="
                f"{overrides['img_size']} would resample it at load time"
            )


def _only_pos_embed_differs(diffs: list[str]) -> bool:
    """A pos_embed of another grid is reported below with the img_size it implies."""
    return len(diffs) == 1 and diffs[0].startswith("mis-shaped key(s): pos_embed ")


# -- official layout -> timm, strictly -------------------------------------------------------
def to_timm_layout(spec: BackboneSpec, sd: StateDict, model: Any) -> StateDict:
    """An official state dict in the layout of ``model``, by the timm model module's own
    ``checkpoint_filter_fn`` (the conversion loading uses; export inverts it)."""
    if spec.family in ("dino", "dinov2"):
        return timm_vit.checkpoint_filter_fn(dict(sd), model)
    if spec.family == "dinov3":
        return timm_eva.checkpoint_filter_fn(dict(sd), model)
    if spec.family == "dino_resnet":  # timm's ResNet has torchvision's names
        return dict(sd)
    return timm_convnext.checkpoint_filter_fn(dict(sd), model)


def _expected_dropped_numel(spec: BackboneSpec, sd: StateDict) -> int:
    """Elements of the official dict that timm's layout has no place for, all unused in eval."""
    dropped = sd["mask_token"].numel() if "mask_token" in sd else 0
    if spec.family == "dinov2" and "register_tokens" in sd:
        dropped += sd["pos_embed"].shape[-1]  # pos slot 0 is folded into cls_token
    if spec.family == "dinov3":
        for k, v in sd.items():
            if (
                k.endswith(".bias_mask")
                or k.startswith("local_cls_norm.")
                or k.endswith(".periods")
            ):
                dropped += v.numel()
            elif k.endswith("attn.qkv.bias"):
                dropped += v.numel() // 3  # the k third: masked to 0 by bias_mask
    if spec.family == "dinov3_convnext":
        dropped += sum(v.numel() for k, v in sd.items() if k.startswith("norms."))
    return dropped


def load_official_state_dict(
    model: nn.Module, arch: Arch, sd: StateDict, source: str
) -> Tensor | None:
    """Load an official-layout ``sd`` into timm ``model`` strictly; returns DINOv3 RoPE periods.

    Works on meta-device models and tensors (then nothing is allocated).
    """
    spec = arch.spec
    meta = any(p.is_meta for p in model.parameters())
    if spec.family == "dinov3":
        _check_bias_masks(sd, source)
    if spec.family == "dinov3_convnext" and "norms.3.weight" in sd and not meta:
        for part in ("weight", "bias"):
            if not torch.equal(sd[f"norms.3.{part}"], sd[f"norm.{part}"]):
                raise WeightsError(
                    f"{source}: norms.3.{part} differs from norm.{part}; the "
                    "official ConvNeXt stores one module under both names"
                )
    converted = to_timm_layout(spec, sd, model)
    total_in = sum(v.numel() for v in sd.values())
    total_out = sum(v.numel() for v in converted.values())
    if total_in - _expected_dropped_numel(spec, sd) != total_out:
        raise WeightsError(
            f"{source}: converting to timm's layout would drop {total_in - total_out} values, "
            f"expected {_expected_dropped_numel(spec, sd)}; refusing a partial load"
        )
    try:
        model.load_state_dict(converted, strict=True, assign=meta)
    except RuntimeError as e:
        raise WeightsError(f"{source}: strict load into {spec.name} failed:\n{e}") from None
    periods = sd.get("rope_embed.periods")
    return None if periods is None else periods.detach()


def _check_bias_masks(sd: StateDict, source: str) -> None:
    for k, mask in sd.items():
        if not k.endswith("attn.qkv.bias_mask") or mask.is_meta:
            continue
        d = mask.numel() // 3
        want = torch.cat([torch.ones(d), torch.zeros(d), torch.ones(d)]).to(mask.dtype)
        if not torch.equal(mask, want):
            raise WeightsError(
                f"{source}: {k} is not [1]*D + [0]*D + [1]*D; timm (and densekit) can only "
                "reproduce DINOv3 attention with the k bias masked"
            )


def _adapt_in_chans(backbone: Backbone, in_chans: int) -> None:
    family = backbone.spec.family
    conv: Any
    if backbone.spec.is_vit:
        conv = backbone.model.patch_embed.proj
    elif family == "dino_resnet":
        conv = backbone.model.conv1
    else:
        conv = backbone.model.stem[0]
    new = nn.Conv2d(
        in_chans, conv.out_channels, conv.kernel_size, conv.stride, bias=conv.bias is not None
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_chans, conv.weight.detach().clone()))
        if conv.bias is not None and new.bias is not None:
            new.bias.copy_(conv.bias)
    new.requires_grad_(False)
    if backbone.spec.is_vit:
        backbone.model.patch_embed.proj = new
    elif family == "dino_resnet":
        backbone.model.conv1 = new
    else:
        backbone.model.stem[0] = new
