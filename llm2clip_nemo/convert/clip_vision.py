"""Our ViT <-> Hugging Face `CLIPVisionModelWithProjection`: one declarative key map.

HF key names are public API (frozen), ours are the canonical (local-spec) layout of
`vision.VisionTransformer`. Every tensor maps one to one except attention: HF keeps q/k/v
separate, megatron fuses them into `linear_qkv` whose rows are grouped per head,
[num_heads, (q, k, v), head_dim], not [(q, k, v), num_heads, head_dim].
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from llm2clip_nemo.config.loader import ConfigError
from llm2clip_nemo.vision.config import ARCH_FIELDS, FROM_CHECKPOINT, ViTConfig

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, PretrainedConfig, PreTrainedModel

    from llm2clip_nemo.vision.vit import VisionTransformer

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
_HF_SUPPORTED_TYPES = ("clip", "clip_vision_model")
SIGLIP_FAMILY_TYPES = ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model")
"""model_type values handed to `convert.siglip_vision` (which refuses the NaFlex siglip2 ones)."""


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


def _as_int(value, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"unknown checkpoint layout: non-square {name}={list(value)} is not supported.")
        value = value[0]
    return int(value)


def vit_config_from_hf(hf_cfg: dict | PretrainedConfig, embed_dim: int | None = None) -> ViTConfig:
    """HF CLIPVisionConfig (or CLIPConfig, or their dict) -> ViTConfig. `embed_dim` overrides
    `projection_dim` (CLIPModel keeps the true value at the top level, not in vision_config)."""
    d = hf_cfg if isinstance(hf_cfg, dict) else hf_cfg.to_dict()
    model_type = d.get("model_type")
    if model_type in SIGLIP_FAMILY_TYPES:  # SigLIP towers: their own key map
        from .siglip_vision import siglip_config_from_hf

        return siglip_config_from_hf(d)
    if model_type not in _HF_SUPPORTED_TYPES:
        raise ValueError(
            f"unknown checkpoint layout: model_type={model_type!r}; expected one of {list(_HF_SUPPORTED_TYPES)} "
            "(a Hugging Face CLIP vision checkpoint)."
        )
    if model_type == "clip":
        embed_dim = embed_dim or d.get("projection_dim")
        d = d["vision_config"]
    act = d.get("hidden_act", "quick_gelu")
    if act not in ("gelu", "quick_gelu"):
        raise ValueError(f"unknown checkpoint layout: hidden_act={act!r}; only 'gelu' and 'quick_gelu' map.")
    cfg = ViTConfig(
        image_size=_as_int(d.get("image_size", 224), "image_size"),
        patch_size=_as_int(d.get("patch_size", 32), "patch_size"),
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


# ViTConfig field -> the HF CLIPVisionConfig key it comes from (how the messages name the checkpoint's side).
HF_NAMES = {"family": "family", "image_size": "image_size", "patch_size": "patch_size", "num_channels": "num_channels",
            "width": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
            "mlp_dim": "intermediate_size", "activation": "hidden_act", "layernorm_eps": "layer_norm_eps"}


def match_vision_architecture(cfg: ViTConfig, ckpt: ViTConfig, source: str, prefix: str = "model.vision") -> ViTConfig:
    """`cfg` with each architecture field (vision.config.ARCH_FIELDS: every field that changes the
    checkpoint's numbers) left to the checkpoint (0, or activation='checkpoint') set to `ckpt`'s value.

    Raises ConfigError (one line: the field, both values, the fix) for the first field set to a value
    other than the checkpoint's. The pre-LN / post-LN layout is fixed by the key map, which refuses
    checkpoints without it; embed_dim is not compared (a resized projection is re-initialised)."""
    updates = {}
    for f in ARCH_FIELDS:
        mine, theirs = getattr(cfg, f), getattr(ckpt, f)
        if mine in (0, FROM_CHECKPOINT):
            updates[f] = theirs
        elif mine != theirs:
            keep = FROM_CHECKPOINT if f in ("activation", "family") else 0
            raise ConfigError(f"{source} has {HF_NAMES[f]}={theirs!r} but {prefix}.{f}={mine!r}: set {prefix}.{f}="
                              f"{theirs} (or {keep} to take the checkpoint's value).")
    return dataclasses.replace(cfg, **updates)


def read_vision_config(path: str | Path) -> ViTConfig | None:
    """The ViTConfig of a HF CLIP vision checkpoint dir from its config.json alone (no weights read);
    None when the dir has no config.json. Raises ConfigError for a config that does not map."""
    f = Path(path) / "config.json"
    if not f.is_file():
        return None
    try:
        return vit_config_from_hf(json.loads(f.read_text()))
    except (ValueError, KeyError) as e:
        raise ConfigError(f"model.init_from={str(path)!r}: {e}") from None


def adopt_checkpoint_architecture(cfg: ViTConfig, init_from: str, prefix: str = "model.vision") -> ViTConfig:
    """Fine-tune init, at config load: `match_vision_architecture` against `init_from`'s config.json.
    A dir not readable here (a cluster path) is checked later, when its weights load; fields left to
    the checkpoint then need it now (ConfigError)."""
    ckpt = read_vision_config(init_from) if init_from else None
    if ckpt is None:
        pending = cfg.from_checkpoint_fields()
        if pending:
            raise ConfigError(f"{prefix}.{pending[0]}={getattr(cfg, pending[0])!r} takes the checkpoint's value but "
                              f"model.init_from={init_from!r} has no config.json here: point model.init_from at a "
                              f"Hugging Face CLIP vision checkpoint dir or give {prefix}.{pending[0]} a value.")
        return cfg
    return match_vision_architecture(cfg, ckpt, f"model.init_from={init_from}", prefix)


def hf_config_from_vit(cfg: ViTConfig) -> CLIPVisionConfig:
    """ViTConfig -> transformers CLIPVisionConfig."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, projection_dim=cfg.embed_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_channels=cfg.num_channels,
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_act=cfg.activation,
        layer_norm_eps=cfg.layernorm_eps, attention_dropout=cfg.attention_dropout,
    )


def _load_hf_dir(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and the raw weights of an HF directory, read directly so that nothing is
    silently random-initialised (transformers would do that for keys it does not find)."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: pass a Hugging Face model directory.")
    config = json.loads(cfg_file.read_text())
    from safetensors.torch import load_file

    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return config, load_file(single)
    if index.is_file():
        sd = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            sd.update(load_file(path / shard))
        return config, sd
    if (path / "pytorch_model.bin").is_file():
        return config, torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path} holds no model.safetensors(.index.json) or pytorch_model.bin.")


def vit_from_hf(src: str | Path | PreTrainedModel, require_projection: bool = False) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """A HF CLIP or SigLIP vision model (instance, or a directory path) -> (ViTConfig, canonical state dict).

    Load the result with `VisionTransformer(cfg, groups).load_canonical_state_dict(sd)`. Training
    switches (fp8, recompute, dtype) keep their defaults: set them with `dataclasses.replace`.
    """
    if isinstance(src, (str, Path)):
        config, hf_sd = _load_hf_dir(Path(src))
    else:
        config, hf_sd = src.config.to_dict(), src.state_dict()
    if config.get("model_type") in SIGLIP_FAMILY_TYPES:
        from .siglip_vision import siglip_state_dict_from_hf

        cfg = vit_config_from_hf(config)
        return cfg, siglip_state_dict_from_hf(hf_sd, cfg)
    proj = hf_sd.get("visual_projection.weight")
    cfg = vit_config_from_hf(config, embed_dim=proj.shape[0] if proj is not None else None)
    return cfg, vit_state_dict_from_hf(hf_sd, cfg, require_projection=require_projection)


def vit_to_hf(model: VisionTransformer) -> CLIPVisionModelWithProjection:
    """Our VisionTransformer -> an eval-mode transformers CLIPVisionModelWithProjection (fp32 copy
    of the weights), or SiglipVisionModel for family='siglip'; `save_pretrained(dir)` then writes a
    stock safetensors checkpoint."""
    from transformers import CLIPVisionModelWithProjection

    cfg = model.cfg
    if cfg.family == "siglip":
        from .siglip_vision import siglip_to_hf

        return siglip_to_hf(model)
    hf = CLIPVisionModelWithProjection(hf_config_from_vit(cfg))
    sd = vit_state_dict_to_hf(model.canonical_state_dict(), cfg)
    hf.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return hf.eval()
