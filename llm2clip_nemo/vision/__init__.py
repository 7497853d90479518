"""Vision tower: a CLIP ViT on megatron-core's TransformerBlock (TE spec on GPU, local on CPU)."""
from .config import PRESETS, ViTConfig
from .vit import VisionTransformer, build_vit

__all__ = ["PRESETS", "ViTConfig", "VisionTransformer", "build_vit"]
