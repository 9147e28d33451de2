"""Hugging Face checkpoints (RAD-DINO, facebook/dinov2-*, facebook/dinov3-*) -> official layout.

Transformers' ``Dinov2Model``, ``Dinov2WithRegistersModel`` and ``DINOv3ViTModel`` hold the same
tensors as Meta's files under other names (and q/k/v split into three projections). Converting
them to the official layout lets one strict loader serve every source. Both the original
transformers names (``attention.attention.query``) and the renamed ones of transformers 5
(``attention.q_proj``, ``model.layer.N``) are accepted.

Two facts about HF DINOv3 files: they have no key bias (the official k-bias is masked to zero
anyway) and no ``rope_embed.periods``; the converted dict gets the official ``bias_mask`` and the
fp32 periods that transformers itself computes, so nothing is guessed beyond what the HF model
computes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from densekit.backbones.checkpoint import StateDict, load_safetensors_file, load_torch_file
from densekit.errors import WeightsError

_HF_MODEL_TYPES = ("dinov2", "dinov2_with_registers", "dinov3_vit")


def is_hf_layout(sd: StateDict) -> bool:
    return any(k.startswith("embeddings.") for k in sd)


def read_hf_folder(folder: Path) -> tuple[StateDict, dict]:
    """Read a ``save_pretrained`` folder: its weights (official layout) and its config."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsError(
            f"{folder}: a weights folder must be a Hugging Face model folder with config.json "
            "and model.safetensors (or pytorch_model.bin)"
        )
    config = json.loads(config_path.read_text())
    model_type = config.get("model_type")
    if model_type not in _HF_MODEL_TYPES:
        raise WeightsError(
            f"{config_path}: model_type {model_type!r} is not a DINO ViT; supported: "
            f"{list(_HF_MODEL_TYPES)}"
        )
    if (folder / "model.safetensors").is_file():
        sd = load_safetensors_file(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        sd = load_torch_file(folder / "pytorch_model.bin")
    else:
        raise WeightsError(f"{folder}: no model.safetensors or pytorch_model.bin in the folder")
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        config["_preprocessor"] = json.loads(processor.read_text())
    return hf_to_official(sd, config, source=str(folder)), config


def hf_weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise WeightsError(f"{folder}: no model.safetensors or pytorch_model.bin in the folder")


def hf_to_official(sd: StateDict, config: dict | None, source: str) -> StateDict:
    """Rename an HF DINOv2/DINOv3 state dict to the official layout of Meta's files."""
    dinov3 = any(re.match(r"(model\.)?layer\.\d+\.", k) for k in sd)
    out = _convert_dinov3(sd, config) if dinov3 else _convert_dinov2(sd)
    return out


def _take(sd: StateDict, used: set[str], *names: str) -> torch.Tensor:
    for n in names:
        if n in sd:
            used.add(n)
            return sd[n]
    raise WeightsError(f"Hugging Face checkpoint lacks {names[0]!r} (or {list(names[1:])})")


def _finish(sd: StateDict, used: set[str], out: StateDict, source: str) -> StateDict:
    leftover = sorted(set(sd) - used)
    if leftover:
        raise WeightsError(
            f"{source}: Hugging Face keys with no place in the official layout: {leftover[:10]}"
        )
    return out


def _convert_dinov2(sd: StateDict) -> StateDict:
    used: set[str] = set()
    out: StateDict = {}
    take = lambda *n: _take(sd, used, *n)  # noqa: E731
    out["cls_token"] = take("embeddings.cls_token")
    out["pos_embed"] = take("embeddings.position_embeddings")
    if "embeddings.register_tokens" in sd:
        out["register_tokens"] = take("embeddings.register_tokens")
    out["mask_token"] = take("embeddings.mask_token").reshape(1, -1)
    out["patch_embed.proj.weight"] = take("embeddings.patch_embeddings.projection.weight")
    out["patch_embed.proj.bias"] = take("embeddings.patch_embeddings.projection.bias")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    for i in range(depth):
        p, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            q = take(p + f"attention.attention.query.{part}", p + f"attention.q_proj.{part}")
            k = take(p + f"attention.attention.key.{part}", p + f"attention.k_proj.{part}")
            v = take(p + f"attention.attention.value.{part}", p + f"attention.v_proj.{part}")
            out[b + f"attn.qkv.{part}"] = torch.cat([q, k, v])
            out[b + f"attn.proj.{part}"] = take(
                p + f"attention.output.dense.{part}", p + f"attention.o_proj.{part}"
            )
            out[b + f"norm1.{part}"] = take(p + f"norm1.{part}")
            out[b + f"norm2.{part}"] = take(p + f"norm2.{part}")
            if p + "mlp.weights_in.weight" in sd:  # SwiGLU (ViT-g)
                out[b + f"mlp.w12.{part}"] = take(p + f"mlp.weights_in.{part}")
                out[b + f"mlp.w3.{part}"] = take(p + f"mlp.weights_out.{part}")
            else:
                out[b + f"mlp.fc1.{part}"] = take(p + f"mlp.fc1.{part}")
                out[b + f"mlp.fc2.{part}"] = take(p + f"mlp.fc2.{part}")
        out[b + "ls1.gamma"] = take(p + "layer_scale1.lambda1")
        out[b + "ls2.gamma"] = take(p + "layer_scale2.lambda1")
    out["norm.weight"] = take("layernorm.weight")
    out["norm.bias"] = take("layernorm.bias")
    return _finish(sd, used, out, "HF DINOv2")


def _convert_dinov3(sd: StateDict, config: dict | None) -> StateDict:
    used: set[str] = set()
    out: StateDict = {}
    take = lambda *n: _take(sd, used, *n)  # noqa: E731
    dim = sd["embeddings.cls_token"].shape[-1]
    out["cls_token"] = take("embeddings.cls_token")
    out["storage_tokens"] = take("embeddings.register_tokens")
    out["mask_token"] = take("embeddings.mask_token").reshape(1, -1)
    out["patch_embed.proj.weight"] = take("embeddings.patch_embeddings.weight")
    out["patch_embed.proj.bias"] = take("embeddings.patch_embeddings.bias")
    gated = any(".mlp.gate_proj." in k for k in sd)
    act = (config or {}).get("hidden_act")
    if act is not None and act != ("silu" if gated else "gelu"):
        raise WeightsError(
            f"HF DINOv3 config has hidden_act {act!r}; the official "
            f"{'SwiGLU' if gated else 'MLP'} blocks use {'silu' if gated else 'gelu'}"
        )
    heads = (config or {}).get("num_attention_heads")
    if heads is None:
        raise WeightsError("an HF DINOv3 checkpoint needs its config.json (num_attention_heads)")
    theta = float((config or {}).get("rope_theta", 100.0))
    head_dim = dim // heads
    # transformers: inv_freq = 1 / theta ** arange(0, 1, 4 / head_dim); periods are its inverse.
    out["rope_embed.periods"] = theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)
    layer_idx = {int(m.group(2)) for k in sd if (m := re.match(r"(model\.)?layer\.(\d+)\.", k))}
    for i in range(max(layer_idx) + 1):
        pre = f"model.layer.{i}." if f"model.layer.{i}.norm1.weight" in sd else f"layer.{i}."
        b = f"blocks.{i}."
        q_w = take(pre + "attention.q_proj.weight")
        k_w = take(pre + "attention.k_proj.weight")
        v_w = take(pre + "attention.v_proj.weight")
        out[b + "attn.qkv.weight"] = torch.cat([q_w, k_w, v_w])
        if pre + "attention.q_proj.bias" in sd:
            q_b = take(pre + "attention.q_proj.bias")
            v_b = take(pre + "attention.v_proj.bias")
            k_b = (
                take(pre + "attention.k_proj.bias")
                if pre + "attention.k_proj.bias" in sd
                else torch.zeros_like(q_b)
            )
            out[b + "attn.qkv.bias"] = torch.cat([q_b, k_b, v_b])
            out[b + "attn.qkv.bias_mask"] = torch.cat(
                [torch.ones(dim), torch.zeros(dim), torch.ones(dim)]
            )
        out[b + "attn.proj.weight"] = take(pre + "attention.o_proj.weight")
        out[b + "attn.proj.bias"] = take(pre + "attention.o_proj.bias")
        for part in ("weight", "bias"):
            out[b + f"norm1.{part}"] = take(pre + f"norm1.{part}")
            out[b + f"norm2.{part}"] = take(pre + f"norm2.{part}")
        if pre + "mlp.gate_proj.weight" in sd:  # SwiGLU: gate = w1, up = w2, down = w3
            for hf, official in (("gate_proj", "w1"), ("up_proj", "w2"), ("down_proj", "w3")):
                for part in ("weight", "bias"):
                    if pre + f"mlp.{hf}.{part}" in sd:
                        out[b + f"mlp.{official}.{part}"] = take(pre + f"mlp.{hf}.{part}")
        else:
            for hf, official in (("up_proj", "fc1"), ("down_proj", "fc2")):
                for part in ("weight", "bias"):
                    if pre + f"mlp.{hf}.{part}" in sd:
                        out[b + f"mlp.{official}.{part}"] = take(pre + f"mlp.{hf}.{part}")
        out[b + "ls1.gamma"] = take(pre + "layer_scale1.lambda1")
        out[b + "ls2.gamma"] = take(pre + "layer_scale2.lambda1")
    out["norm.weight"] = take("norm.weight")
    out["norm.bias"] = take("norm.bias")
    return _finish(sd, used, out, "HF DINOv3")
