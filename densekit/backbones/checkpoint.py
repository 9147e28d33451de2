"""Reading weight files into a state dict in the official layout, and telling what they hold.

Every file is read without running code from it: ``torch.load(..., weights_only=True)`` for
pickles, ``safetensors`` for ``.safetensors``. A file must hold a flat ``{name: tensor}`` dict (the
layout Meta publishes); anything else is refused with a message that says what was found.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from densekit.backbones.arch import Arch
from densekit.backbones.registry import REGISTRY
from densekit.errors import WeightsError

StateDict = dict[str, torch.Tensor]


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_flat(obj: object, path: Path) -> StateDict:
    if not isinstance(obj, dict):
        raise WeightsError(
            f"{path}: holds a {type(obj).__name__}, not a state dict ({{name: tensor}})"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        nested = [k for k in bad if isinstance(obj.get(k), dict)]
        hint = (
            f"; it looks like a training checkpoint with nested entries {nested[:5]}: save the "
            "backbone's state dict on its own (e.g. torch.save(ckpt['teacher'], ...)) and pass "
            "that file"
            if nested
            else ""
        )
        raise WeightsError(
            f"{path}: not a flat state dict; entries that are not tensors: {bad[:10]}{hint}"
        )
    return obj


def why_unreadable(err: Exception) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused or failed to read a file, in words:
    executable objects refused, a damaged (truncated) file, or not a PyTorch file at all."""
    text = str(err)
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            return (
                f"refused: it contains executable objects ({found.group(0)}); densekit reads "
                "files with weights_only=True and runs no code from them"
            )
        operand = re.search(r"Unsupported operand (\d+)", text)
        what = f"unsupported pickle opcode {operand.group(1)}" if operand else "refused"
        return (
            f"not a readable PyTorch checkpoint (the safe reader stopped: {what}; a file of "
            "another kind, or a pickle densekit does not read)"
        )
    damaged = (
        "failed finding central directory",
        "PytorchStreamReader failed",
        "unexpected EOF",
        "Ran out of input",
        "file is truncated",
        "invalid header or archive is corrupted",
    )
    if isinstance(err, EOFError) or any(d in text for d in damaged):
        return "damaged: the file is truncated or corrupted (an incomplete download or copy?)"
    first = text.split("Please file an issue")[0].split("In PyTorch 2.6")[0].strip()
    first = first.splitlines()[0] if first else type(err).__name__
    return f"not a readable PyTorch checkpoint ({type(err).__name__}: {first})"


def load_torch_file(path: Path) -> StateDict:
    """``torch.load`` a ``.pth`` with ``weights_only=True`` and check that it is a state dict."""
    if path.is_file() and path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty (an incomplete download or copy?)")
    try:
        # zip-format files (torch.save's default) are memory-mapped: large files load lazily
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:
        raise WeightsError(f"{path}: {why_unreadable(e)}") from None
    return _check_flat(obj, path)


def load_safetensors_file(path: Path) -> StateDict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(
            f"{path}: reading .safetensors needs the 'hf' extra: pip install 'densekit[hf]'"
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None


@dataclass(frozen=True)
class Signature:
    """What a state dict says about its architecture (official layout)."""

    family: str
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    registers: int = 0
    ffn: str = "mlp"  # "mlp" or "swiglu"
    ffn_hidden: int = 0
    qkv_bias: bool = True
    local_cls_norm: bool = False
    dims: tuple[int, ...] = ()
    stage_depths: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.family == "dinov3_convnext":
            return f"ConvNeXt dims {list(self.dims)}, depths {list(self.stage_depths)}"
        if self.family == "dino_resnet":
            return f"ResNet widths {list(self.dims)}, blocks {list(self.stage_depths)}"
        return (
            f"{self.family} patch {self.patch_size}, embed_dim {self.embed_dim}, depth "
            f"{self.depth}, {self.registers} register tokens, {self.ffn} FFN of width "
            f"{self.ffn_hidden}, qkv bias {self.qkv_bias}"
            + (", local_cls_norm" if self.local_cls_norm else "")
        )


def _count(sd: StateDict, prefix: str) -> int:
    idx = {int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def signature_of_state_dict(sd: StateDict) -> Signature | None:
    """Read the architecture off an official-layout state dict; None if it is not one."""
    if "downsample_layers.0.0.weight" in sd:
        dims = tuple(sd[f"downsample_layers.{i}.1.weight"].shape[0] for i in range(1, 4))
        stem = sd["downsample_layers.0.0.weight"]
        return Signature(
            family="dinov3_convnext",
            patch_size=32,
            in_chans=stem.shape[1],
            embed_dim=dims[-1],
            depth=4,
            dims=(stem.shape[0], *dims),
            stage_depths=tuple(_count(sd, f"stages.{i}.") for i in range(4)),
        )
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:  # torchvision's ResNet
        stages = range(1, 5)
        return Signature(
            family="dino_resnet",
            patch_size=32,
            in_chans=sd["conv1.weight"].shape[1],
            embed_dim=sd["layer4.0.conv3.weight"].shape[0] if "layer4.0.conv3.weight" in sd else 0,
            depth=4,
            dims=tuple(
                sd[f"layer{i}.0.conv3.weight"].shape[0]
                for i in stages
                if f"layer{i}.0.conv3.weight" in sd
            ),
            stage_depths=tuple(_count(sd, f"layer{i}.") for i in stages),
        )
    proj = sd.get("patch_embed.proj.weight")
    if proj is None or "cls_token" not in sd:
        return None
    depth = _count(sd, "blocks.")
    if "storage_tokens" in sd or "rope_embed.periods" in sd:
        family = "dinov3"
        registers = sd["storage_tokens"].shape[1] if "storage_tokens" in sd else 0
        swiglu = "blocks.0.mlp.w1.weight" in sd
        hidden = sd["blocks.0.mlp.w1.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0]
    else:  # DINOv2 has a mask token and LayerScale; DINO (v1) has neither
        family = "dinov2" if "mask_token" in sd or "blocks.0.ls1.gamma" in sd else "dino"
        registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
        swiglu = "blocks.0.mlp.w12.weight" in sd
        hidden = (
            sd["blocks.0.mlp.w12.weight"].shape[0] // 2
            if swiglu
            else (sd["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in sd else 0)
        )
    return Signature(
        family=family,
        patch_size=proj.shape[-1],
        in_chans=proj.shape[1],
        embed_dim=proj.shape[0],
        depth=depth,
        registers=registers,
        ffn="swiglu" if swiglu else "mlp",
        ffn_hidden=hidden,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        local_cls_norm="local_cls_norm.weight" in sd,
    )


def signature_of_arch(arch: Arch) -> Signature:
    s = arch.spec
    if not s.is_vit:
        return Signature(
            family=s.family,
            patch_size=32,
            in_chans=3,
            embed_dim=arch.dims[-1],
            depth=4,
            dims=arch.dims,
            stage_depths=arch.stage_depths,
        )
    return Signature(
        family=s.family,
        patch_size=s.patch_size,
        in_chans=3,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        registers=s.num_register_tokens,
        ffn="mlp" if s.ffn == "mlp" else "swiglu",
        ffn_hidden=arch.ffn_hidden,
        qkv_bias=s.qkv_bias,
        local_cls_norm=s.untied_local_cls_norm,
    )


def identify(sig: Signature) -> list[str]:
    """Registry names whose official architecture has this signature."""
    from densekit.backbones.arch import resolve_arch

    return [
        name for name, spec in REGISTRY.items() if signature_of_arch(resolve_arch(spec, {})) == sig
    ]


def official_owner_of_filename(path: Path) -> str | None:
    """The registry entry whose official weight file has this name, if any."""
    for name, spec in REGISTRY.items():
        if path.name in spec.weight_files and name != "rad_dino":
            return name
    return None
