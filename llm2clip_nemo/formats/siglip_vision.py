"""Our ViT (family='siglip') <-> Hugging Face `SiglipVisionModel` (SigLIP, and SigLIP2 at fixed
resolution, which transformers also loads as `SiglipVisionModel`): one declarative key map.

The transformer blocks use the CLIP block map (`clip_vision.LAYER_KEYS`, `QKV_KEYS`: HF spells them
the same); the rest maps one to one, the attention-pooling head included (both sides hold torch
`nn.MultiheadAttention` weights: in_proj [3W, W], out_proj). SigLIP2's NaFlex variant
(`Siglip2VisionModel`: variable resolution and aspect ratio, a resized position grid) is refused.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..vision.config import ViTConfig
from .clip_vision import HF, as_int, state_dict_from_hf, state_dict_to_hf

if TYPE_CHECKING:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from ..vision.vit import VisionTransformer

SIGLIP_TYPES = ("siglip", "siglip_vision_model")
"""model_type values this map reads (SiglipModel, SiglipVisionModel)."""
REFUSED_TYPES = {
    "siglip2": "NaFlex (variable resolution: num_patches instead of image_size)",
    "siglip2_vision_model": "NaFlex (variable resolution: num_patches instead of image_size)",
}
_ACTS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
_H = HF + "head."
GLOBAL_KEYS = [
    ("patch_embed.weight", HF + "embeddings.patch_embedding.weight"),
    ("patch_embed.bias", HF + "embeddings.patch_embedding.bias"),
    ("position_embeddings", HF + "embeddings.position_embedding.weight"),
    ("post_layernorm.weight", HF + "post_layernorm.weight"),
    ("post_layernorm.bias", HF + "post_layernorm.bias"),
    ("head.probe", _H + "probe"),
    ("head.attention.in_proj_weight", _H + "attention.in_proj_weight"),
    ("head.attention.in_proj_bias", _H + "attention.in_proj_bias"),
    ("head.attention.out_proj.weight", _H + "attention.out_proj.weight"),
    ("head.attention.out_proj.bias", _H + "attention.out_proj.bias"),
    ("head.layernorm.weight", _H + "layernorm.weight"),
    ("head.layernorm.bias", _H + "layernorm.bias"),
    ("head.mlp.fc1.weight", _H + "mlp.fc1.weight"),
    ("head.mlp.fc1.bias", _H + "mlp.fc1.bias"),
    ("head.mlp.fc2.weight", _H + "mlp.fc2.weight"),
    ("head.mlp.fc2.bias", _H + "mlp.fc2.bias"),
]
_HF_IGNORED = (HF + "embeddings.position_ids",)


def siglip_config_from_hf(hf_cfg: dict) -> ViTConfig:
    """HF SiglipVisionConfig / SiglipConfig dict -> ViTConfig(family='siglip').

    Raises ValueError naming the field for what does not map: model_type (NaFlex Siglip2), a vision
    config without the attention-pooling head (vision_use_head=false), hidden_act, non-square sizes."""
    model_type = hf_cfg.get("model_type")
    if model_type in REFUSED_TYPES:
        raise ValueError(f"unsupported checkpoint: model_type={model_type!r} is SigLIP2 {REFUSED_TYPES[model_type]}; "
                         "use a fixed-resolution SigLIP/SigLIP2 checkpoint (SiglipVisionModel, e.g. "
                         "google/siglip2-base-patch16-224).")
    if model_type not in SIGLIP_TYPES:
        raise ValueError(f"unknown checkpoint layout: model_type={model_type!r}; expected one of {list(SIGLIP_TYPES)}.")
    d = hf_cfg["vision_config"] if model_type == "siglip" else hf_cfg
    if d.get("vision_use_head", True) is False:
        raise ValueError("unsupported checkpoint: vision_use_head=false (no attention-pooling head); only "
                         "SigLIP towers with their MAP head map.")
    act = d.get("hidden_act", "gelu_pytorch_tanh")
    if act not in _ACTS:
        raise ValueError(f"unknown checkpoint layout: hidden_act={act!r}; only {sorted(_ACTS)} map.")
    width = int(d.get("hidden_size", 768))
    cfg = ViTConfig(
        family="siglip",
        image_size=as_int(d.get("image_size", 224), "image_size"),
        patch_size=as_int(d.get("patch_size", 16), "patch_size"),
        num_channels=int(d.get("num_channels", 3)),
        width=width,
        num_layers=int(d.get("num_hidden_layers", 12)),
        num_heads=int(d.get("num_attention_heads", 12)),
        mlp_dim=int(d.get("intermediate_size", 3072)),
        embed_dim=width,
        activation=_ACTS[act],
        layernorm_eps=float(d.get("layer_norm_eps", 1e-6)),
    )
    cfg.validate()
    return cfg


def siglip_state_dict_from_hf(hf_sd: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """HF SigLIP vision state dict (SiglipVisionModel, or SiglipModel whose text side is skipped) ->
    canonical ViT state dict. Keys may carry the `vision_model.` prefix (SiglipModel, checkpoints
    saved by transformers 4) or not (SiglipVisionModel of transformers 5). Raises ValueError listing
    missing and unmapped keys."""
    if not any(k.startswith(HF) for k in hf_sd):
        hf_sd = {HF + k: v for k, v in hf_sd.items()}
    vision = {k: v for k, v in hf_sd.items() if k.startswith(HF) and k not in _HF_IGNORED}
    out, used, missing = state_dict_from_hf(vision, cfg, GLOBAL_KEYS)
    unknown = sorted(set(vision) - used)
    if missing or unknown:
        raise ValueError(f"unknown checkpoint layout: cannot map it onto the SigLIP ViT (missing {missing[:6]}, "
                         f"unmapped {unknown[:6]}); only Hugging Face SiglipVisionModel / SiglipModel map.")
    return out


def siglip_state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Canonical ViT (family='siglip') state dict -> HF state dict with `vision_model.` keys (new tensors)."""
    return state_dict_to_hf(sd, cfg, GLOBAL_KEYS, "SigLIP")


def hf_config_from_siglip(cfg: ViTConfig) -> SiglipVisionConfig:
    """ViTConfig(family='siglip') -> transformers SiglipVisionConfig."""
    from transformers import SiglipVisionConfig

    act = {v: k for k, v in _ACTS.items()}[cfg.activation]
    return SiglipVisionConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_channels=cfg.num_channels, image_size=cfg.image_size,
        patch_size=cfg.patch_size, hidden_act=act, layer_norm_eps=cfg.layernorm_eps,
        attention_dropout=cfg.attention_dropout,
    )


def siglip_to_hf(model: VisionTransformer) -> SiglipVisionModel:
    """Our VisionTransformer (family='siglip') -> an eval-mode transformers SiglipVisionModel (fp32)."""
    from transformers import SiglipVisionModel

    hf = SiglipVisionModel(hf_config_from_siglip(model.cfg))
    sd = siglip_state_dict_to_hf(model.canonical_state_dict(), model.cfg)
    if not any(k.startswith(HF) for k in hf.state_dict()):  # transformers 5 drops the prefix
        sd = {k[len(HF):]: v for k, v in sd.items()}
    hf.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return hf.eval()
