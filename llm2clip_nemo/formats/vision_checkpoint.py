"""HF CLIP / SigLIP vision checkpoints <-> our ViT: pick the key map by model_type
(`formats.clip_vision`, `formats.siglip_vision`), read a checkpoint directory, match a configured
architecture against a checkpoint's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config.loader import ConfigError
from ..config.paths import field_path, replace_config
from ..vision.config import ARCH_FIELDS, FROM_CHECKPOINT, ViTConfig
from .clip_vision import clip_config_from_hf, hf_config_from_vit, vit_state_dict_from_hf, vit_state_dict_to_hf
from .siglip_vision import siglip_config_from_hf, siglip_state_dict_from_hf, siglip_to_hf

if TYPE_CHECKING:
    from transformers import CLIPVisionModelWithProjection, PretrainedConfig, PreTrainedModel

    from ..vision.vit import VisionTransformer

SIGLIP_FAMILY_TYPES = ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model")
"""model_type values handed to `formats.siglip_vision` (which refuses the NaFlex siglip2 ones)."""


def vit_config_from_hf(hf_cfg: dict | PretrainedConfig, embed_dim: int | None = None) -> ViTConfig:
    """HF CLIP or SigLIP vision config (or the full model's config, or their dict) -> ViTConfig.
    `embed_dim` overrides CLIP's `projection_dim`. Raises ValueError naming what does not map."""
    d = hf_cfg if isinstance(hf_cfg, dict) else hf_cfg.to_dict()
    if d.get("model_type") in SIGLIP_FAMILY_TYPES:
        return siglip_config_from_hf(d)
    return clip_config_from_hf(d, embed_dim)


# ViTConfig field -> the HF CLIPVisionConfig key it comes from (how the messages name the checkpoint's side).
HF_NAMES = {"family": "family", "image_size": "image_size", "patch_size": "patch_size", "num_channels": "num_channels",
            "width": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
            "mlp_dim": "intermediate_size", "activation": "hidden_act", "layernorm_eps": "layer_norm_eps"}


def match_vision_architecture(cfg: ViTConfig, ckpt: ViTConfig, source: str) -> ViTConfig:
    """`cfg` with each architecture field (vision.config.ARCH_FIELDS: every field that changes the
    checkpoint's numbers) left to the checkpoint (0, or activation='checkpoint') set to `ckpt`'s value.

    Raises ConfigError (one line: the field, both values, the fix) for the first field set to a value
    other than the checkpoint's. The pre-LN / post-LN layout is fixed by the key map, which refuses
    checkpoints without it; embed_dim is not compared (a resized projection is re-initialised).
    Fields are named by `cfg`'s recorded path (`config.paths`: model.vision in the stage-2 recipes)."""
    updates = {}
    for f in ARCH_FIELDS:
        mine, theirs = getattr(cfg, f), getattr(ckpt, f)
        if mine in (0, FROM_CHECKPOINT):
            updates[f] = theirs
        elif mine != theirs:
            keep = FROM_CHECKPOINT if f in ("activation", "family") else 0
            raise ConfigError(f"{source} has {HF_NAMES[f]}={theirs!r} but {field_path(cfg, f)}={mine!r}: set {field_path(cfg, f)}="
                              f"{theirs} (or {keep} to take the checkpoint's value).")
    return replace_config(cfg, **updates)


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


def adopt_checkpoint_architecture(cfg: ViTConfig, init_from: str) -> ViTConfig:
    """Fine-tune init, at config load: `match_vision_architecture` against `init_from`'s config.json.
    A dir not readable here (a cluster path) is checked later, when its weights load; fields left to
    the checkpoint then need it now (ConfigError)."""
    ckpt = read_vision_config(init_from) if init_from else None
    if ckpt is None:
        pending = cfg.from_checkpoint_fields()
        if pending:
            raise ConfigError(f"{field_path(cfg, pending[0])}={getattr(cfg, pending[0])!r} takes the checkpoint's value but "
                              f"model.init_from={init_from!r} has no config.json here: point model.init_from at a "
                              f"Hugging Face CLIP vision checkpoint dir or give {field_path(cfg, pending[0])} a value.")
        return cfg
    return match_vision_architecture(cfg, ckpt, f"model.init_from={init_from}")


def load_hf_dir(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
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
        config, hf_sd = load_hf_dir(Path(src))
    else:
        config, hf_sd = src.config.to_dict(), src.state_dict()
    if config.get("model_type") in SIGLIP_FAMILY_TYPES:
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
        return siglip_to_hf(model)
    hf = CLIPVisionModelWithProjection(hf_config_from_vit(cfg))
    sd = vit_state_dict_to_hf(model.canonical_state_dict(), cfg)
    hf.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return hf.eval()
