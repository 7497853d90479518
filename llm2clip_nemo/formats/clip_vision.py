"""Our ViT <-> Hugging Face `CLIPVisionModelWithProjection`: one declarative key map (the SigLIP map,
`formats.siglip_vision`, reuses its block rows; `formats.vision_checkpoint` picks the map by model_type).

HF key names are public API (frozen), ours are the canonical (local-spec) layout of
`vision.VisionTransformer`. Every tensor maps one to one except attention: HF keeps q/k/v
separate, megatron fuses them into `linear_qkv` whose rows are grouped per head,
[num_heads, (q, k, v), head_dim], not [(q, k, v), num_heads, head_dim].
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..vision.config import ViTConfig

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig

HF = "vision_model."
# (ours, HF) pairs copied as they are; "{i}" is the layer index.
GLOBAL_KEYS = [
    ("patch_embed.weight", HF + "embeddings.patch_embedding.weight"),
    ("class_token", HF + "embeddings.class_embedding"),
    ("position_embeddings", HF + "embeddings.position_embedding.weight"),
    ("pre_layernorm.weight", HF + "pre_layrnorm.weight"),  # sic: HF's spelling
    ("pre_layernorm.bias", HF + "pre_layrnorm.bias"),
    ("post_layernorm.weight", HF + "post_layernorm.weight"),
    ("post_layernorm.bias", HF + "post_layernorm.bias"),
    ("projection.weight", "visual_projection.weight"),
]
_L = "decoder.layers.{i}."
_HL = HF + "encoder.layers.{i}."
LAYER_KEYS = [
    (_L + "input_layernorm.weight", _HL + "layer_norm1.weight"),
    (_L + "input_layernorm.bias", _HL + "layer_norm1.bias"),
    (_L + "self_attention.linear_proj.weight", _HL + "self_attn.out_proj.weight"),
    (_L + "self_attention.linear_proj.bias", _HL + "self_attn.out_proj.bias"),
    (_L + "pre_mlp_layernorm.weight", _HL + "layer_norm2.weight"),
    (_L + "pre_mlp_layernorm.bias", _HL + "layer_norm2.bias"),
    (_L + "mlp.linear_fc1.weight", _HL + "mlp.fc1.weight"),
    (_L + "mlp.linear_fc1.bias", _HL + "mlp.fc1.bias"),
    (_L + "mlp.linear_fc2.weight", _HL + "mlp.fc2.weight"),
    (_L + "mlp.linear_fc2.bias", _HL + "mlp.fc2.bias"),
]
# fused ours <- (q, k, v) of HF
QKV_KEYS = [
    (_L + "self_attention.linear_qkv." + p, tuple(_HL + f"self_attn.{n}_proj." + p for n in "qkv"))
    for p in ("weight", "bias")
]
# HF entries that are not weights (older checkpoints persisted the position_ids buffer).
_HF_IGNORED = (HF + "embeddings.position_ids",)
CLIP_TYPES = ("clip", "clip_vision_model")
"""model_type values this map reads (CLIPModel, CLIPVisionModel[WithProjection])."""


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """HF q/k/v [W(, in)] -> megatron linear_qkv [3W(, in)], rows ordered head by head."""
    rest = q.shape[1:]
    return torch.stack([t.reshape(num_heads, -1, *rest) for t in (q, k, v)], dim=1).reshape(-1, *rest)


def _split_qkv(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `_fuse_qkv`."""
    rest = qkv.shape[1:]
    per_head = qkv.reshape(num_heads, 3, -1, *rest)
    return tuple(per_head[:, j].reshape(-1, *rest).clone() for j in range(3))


def _expand(pairs, num_layers: int):
    for ours, hf in pairs:
        if "{i}" in ours:
            for i in range(num_layers):
                yield ours.format(i=i), hf.format(i=i) if isinstance(hf, str) else tuple(h.format(i=i) for h in hf)
        else:
            yield ours, hf


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ViTConfig, global_keys, layout: str) -> dict[str, torch.Tensor]:
    """Canonical ViT state dict -> HF state dict by `global_keys` + the shared block map (new
    tensors; the fused QKV split per head). ValueError naming keys the HF `layout` has no place for."""
    sd = {k: v for k, v in sd.items() if not k.endswith("_extra_state")}
    out, used = {}, set()
    for ours, hf in _expand(global_keys + LAYER_KEYS, cfg.num_layers):
        out[hf] = sd[ours].detach().clone()
        used.add(ours)
    for ours, (hq, hk, hv) in _expand(QKV_KEYS, cfg.num_layers):
        out[hq], out[hk], out[hv] = _split_qkv(sd[ours].detach(), cfg.num_heads)
        used.add(ours)
    extra = sorted(set(sd) - used)
    if extra:
        raise ValueError(f"ViT state dict has keys the HF {layout} layout has no place for: {extra[:8]}.")
    return out


def vit_state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Canonical ViT state dict -> HF CLIPVisionModelWithProjection state dict (new tensors)."""
    return state_dict_to_hf(sd, cfg, GLOBAL_KEYS, "CLIP")


def state_dict_from_hf(vision: dict[str, torch.Tensor], cfg: ViTConfig, global_keys
                       ) -> tuple[dict[str, torch.Tensor], set[str], list[str]]:
    """HF vision keys -> (canonical ViT state dict, HF keys used, HF keys missing) by `global_keys` +
    the shared block map (q/k/v fused per head); the caller decides which gaps and leftovers it refuses."""
    out, used, missing = {}, set(), []
    for ours, hf in _expand(global_keys + LAYER_KEYS, cfg.num_layers):
        if hf not in vision:
            missing.append(hf)
            continue
        out[ours] = vision[hf].detach().clone()
        used.add(hf)
    for ours, hfs in _expand(QKV_KEYS, cfg.num_layers):
        if any(h not in vision for h in hfs):
            missing += [h for h in hfs if h not in vision]
            continue
        out[ours] = _fuse_qkv(*(vision[h].detach() for h in hfs), cfg.num_heads)
        used.update(hfs)
    return out, used, missing


def vit_state_dict_from_hf(hf_sd: dict[str, torch.Tensor], cfg: ViTConfig,
                           require_projection: bool = True) -> dict[str, torch.Tensor]:
    """HF CLIP vision state dict -> canonical ViT state dict; refuses keys it cannot map.

    Keys of a full CLIPModel outside the vision tower (text_model.*, text_projection, logit_scale)
    are skipped. Without `require_projection`, a checkpoint with no `visual_projection`
    (CLIPVisionModel) maps all but `projection.weight`, which the caller initialises.
    """
    vision = {k: v for k, v in hf_sd.items()
              if (k.startswith(HF) or k.startswith("visual_projection.")) and k not in _HF_IGNORED}
    if not vision:
        raise ValueError(
            "unknown checkpoint layout: no 'vision_model.*' keys (found e.g. "
            f"{sorted(hf_sd)[:5]}); expected a Hugging Face CLIPVisionModel(WithProjection) or CLIPModel."
        )
    out, used, missing = state_dict_from_hf(vision, cfg, GLOBAL_KEYS)
    if not require_projection and missing == ["visual_projection.weight"]:
        missing = []
    unknown = sorted(set(vision) - used)
    if missing or unknown:
        raise ValueError(
            "unknown checkpoint layout: cannot map it onto the CLIP ViT "
            f"(missing {missing[:6]}{'...' if len(missing) > 6 else ''}, unmapped {unknown[:6]}"
            f"{'...' if len(unknown) > 6 else ''}). Only Hugging Face CLIP vision checkpoints "
            "(CLIPVisionModel[WithProjection], CLIPModel) with q/k/v projections and pre-LN blocks are supported."
        )
    return out


def as_int(value, name: str) -> int:
    """A HF config size as one int: a [h, w] pair must be square. ValueError naming `name` otherwise."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"unknown checkpoint layout: non-square {name}={list(value)} is not supported.")
        value = value[0]
    return int(value)


def clip_config_from_hf(d: dict, embed_dim: int | None = None) -> ViTConfig:
    """HF CLIPVisionConfig or CLIPConfig dict -> ViTConfig. `embed_dim` overrides `projection_dim`
    (CLIPModel keeps the true value at the top level, not in vision_config). Raises ValueError
    naming the field for what does not map (model_type, hidden_act, non-square sizes)."""
    model_type = d.get("model_type")
    if model_type not in CLIP_TYPES:
        raise ValueError(
            f"unknown checkpoint layout: model_type={model_type!r}; expected one of {list(CLIP_TYPES)} "
            "(a Hugging Face CLIP vision checkpoint)."
        )
    if model_type == "clip":
        embed_dim = embed_dim or d.get("projection_dim")
        d = d["vision_config"]
    act = d.get("hidden_act", "quick_gelu")
    if act not in ("gelu", "quick_gelu"):
        raise ValueError(f"unknown checkpoint layout: hidden_act={act!r}; only 'gelu' and 'quick_gelu' map.")
    cfg = ViTConfig(
        image_size=as_int(d.get("image_size", 224), "image_size"),
        patch_size=as_int(d.get("patch_size", 32), "patch_size"),
        num_channels=int(d.get("num_channels", 3)),
        width=int(d.get("hidden_size", 768)),
        num_layers=int(d.get("num_hidden_layers", 12)),
        num_heads=int(d.get("num_attention_heads", 12)),
        mlp_dim=int(d.get("intermediate_size", 3072)),
        embed_dim=int(embed_dim or d.get("projection_dim", 512)),
        activation=act,
        layernorm_eps=float(d.get("layer_norm_eps", 1e-5)),
    )
    cfg.validate()
    return cfg


def hf_config_from_vit(cfg: ViTConfig) -> CLIPVisionConfig:
    """ViTConfig -> transformers CLIPVisionConfig."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, projection_dim=cfg.embed_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_channels=cfg.num_channels,
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_act=cfg.activation,
        layer_norm_eps=cfg.layernorm_eps, attention_dropout=cfg.attention_dropout,
    )


