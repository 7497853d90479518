"""`ViTConfig`: the vision tower's typed config, with presets from a CPU-sized tiny model to g/14.

The field set mirrors Hugging Face `CLIPVisionConfig` (plus the projection size and the
hardware/training switches) so a config converts one to one in both directions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ..config.paths import field_path

ACTIVATIONS = ("gelu", "quick_gelu", "gelu_tanh")
FAMILIES = ("clip", "siglip")
TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")
FP8_RECIPES = ("delayed", "tensorwise")
PARAMS_DTYPES = ("float32", "bfloat16", "float16")

FROM_CHECKPOINT = "checkpoint"
"""`activation` value meaning: take it from the fine-tune checkpoint (numeric architecture fields use 0)."""
# Fields that change a checkpoint's numbers: at fine-tune init each is taken from the checkpoint (when
# set to 0 / FROM_CHECKPOINT) or must equal it (`formats.vision_checkpoint.match_vision_architecture`).
# embed_dim is not among them: a resized projection head is re-initialised by design.
ARCH_FIELDS = ("family", "image_size", "patch_size", "num_channels", "width", "num_layers", "num_heads", "mlp_dim",
               "activation", "layernorm_eps")


@dataclass
class ViTConfig:
    """A CLIP-style ViT: conv patches, class token, learned positions, pre-LN blocks, CLS pooling;
    or (family='siglip') the SigLIP / SigLIP2 layout: conv patches with bias, no class token, no
    pre-LayerNorm, post-LayerNorm over every token, attention-pooling (MAP) head, no projection."""

    CONFIG_PATH: ClassVar[str] = "vision"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    family: str = "clip"
    """'clip' (OpenAI/open_clip layout, HF CLIPVisionModelWithProjection) or 'siglip' (HF
    SiglipVisionModel, fixed resolution; embed_dim must equal width: its pooled output is the embedding);
    'checkpoint' = the fine-tune checkpoint's."""

    image_size: int = 64
    """Square input resolution in pixels; a multiple of `patch_size` (family='siglip': the patch grid is
    floor(image_size / patch_size), as HF's conv does: So400m/14 at 384 px has 27 x 27 patches)."""
    patch_size: int = 8
    """Side of the square patches (the conv kernel and stride)."""
    num_channels: int = 3
    """Input image channels."""
    width: int = 192
    """Hidden size of the transformer (HF `hidden_size`)."""
    num_layers: int = 4
    """Number of transformer blocks."""
    num_heads: int = 3
    """Attention heads; must divide `width`."""
    mlp_dim: int = 768
    """Hidden size of each block's MLP (HF `intermediate_size`)."""
    embed_dim: int = 128
    """Joint embedding size: output of the bias-free `visual_projection`."""
    activation: str = "gelu"
    """MLP activation: 'gelu' (exact), 'quick_gelu' (x * sigmoid(1.702 x), OpenAI CLIP checkpoints) or
    'gelu_tanh' (tanh-approximated GELU, HF 'gelu_pytorch_tanh', SigLIP);
    'checkpoint' = the fine-tune checkpoint's (as do family='checkpoint' and 0 in image_size, patch_size, num_channels, width,
    num_layers, num_heads, mlp_dim and layernorm_eps)."""
    layernorm_eps: float = 1e-5
    """Epsilon of every LayerNorm."""
    hidden_dropout: float = 0.0
    """Dropout after attention and MLP outputs (CLIP uses none)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities (CLIP uses none)."""
    init_std: float = 0.02
    """Std of the normal init of the transformer's linear weights (megatron `init_method_std`)."""
    transformer_impl: str = "auto"
    """Layer implementation: 'local' (torch, any device), 'transformer_engine' (CUDA + TE), or 'auto'
    (TE when `probes.transformer_engine()` says it is usable, local otherwise)."""
    fp8: bool = False
    """Run the transformer GEMMs in FP8 (hybrid E4M3/E5M2) through Transformer Engine."""
    fp8_recipe: str = "delayed"
    """FP8 scaling recipe: 'delayed' or 'tensorwise'."""
    fp8_fallback: bool = False
    """If FP8 is requested on a machine without it (no TE or no sm_89+ GPU), run in bf16/fp32 with a
    warning instead of raising."""
    recompute: bool = False
    """Activation checkpointing of every block (megatron recompute_granularity='full', uniform)."""
    params_dtype: str = "float32"
    """Parameter dtype: 'float32', 'bfloat16' or 'float16' (mixed precision usually keeps float32)."""

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ViTConfig:
        """The preset `name` (see `PRESETS`) with fields replaced by `overrides`."""
        if name not in PRESETS:
            raise ValueError(f"unknown ViT preset {name!r}: choose one of {sorted(PRESETS)}.")
        return dataclasses.replace(PRESETS[name], **overrides)

    def from_checkpoint_fields(self) -> list[str]:
        """Architecture fields left to the fine-tune checkpoint (0, or activation='checkpoint')."""
        return [f for f in ARCH_FIELDS if getattr(self, f) in (0, FROM_CHECKPOINT)]

    @property
    def head_dim(self) -> int:
        """Per-head channels."""
        return self.width // self.num_heads

    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def seq_len(self) -> int:
        """Tokens per image: patches plus the class token (none in the siglip family)."""
        return self.grid_size**2 + (0 if self.family == "siglip" else 1)

    def num_params(self) -> int:
        """Parameter count of the tower (projection included), from the config alone."""
        w, m = self.width, self.mlp_dim
        per_layer = 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (m * w + m) + (w * m + w)
        if self.family == "siglip":  # patch bias, post-LN, MAP head (probe, attention, LN, MLP); no projection
            embed = self.num_channels * self.patch_size**2 * w + w + self.seq_len * w
            head = w + per_layer - 2 * w  # probe + a block's weights with one LayerNorm instead of two
            return embed + self.num_layers * per_layer + 2 * w + head
        embed = self.num_channels * self.patch_size**2 * w + w + self.seq_len * w
        return embed + 2 * w + self.num_layers * per_layer + 2 * w + w * self.embed_dim

    def forward_flops(self) -> float:
        """Forward FLOPs per image (2 per multiply-add; matmuls and attention, norms ignored)."""
        s, w, m = self.seq_len, self.width, self.mlp_dim
        per_layer = 2 * s * (3 * w * w + w * w + 2 * w * m) + 2 * 2 * s * s * w
        patch = 2 * (s - 1) * self.num_channels * self.patch_size**2 * w
        if self.family == "siglip":  # no class token (s patches), attention-pooling head, no projection
            patch = 2 * s * self.num_channels * self.patch_size**2 * w
            head = 2 * s * 2 * w * w + 2 * 2 * w * w + 2 * 2 * s * w + 2 * 2 * w * m
            return float(patch + self.num_layers * per_layer + head)
        return float(patch + self.num_layers * per_layer + 2 * w * self.embed_dim)

    def validate(self) -> None:
        """Raise ValueError naming the field, the value and the fix. Fields left to the checkpoint
        (`from_checkpoint_fields`) are checked once the fine-tune init has filled them in."""
        def f(name: str) -> str:
            return field_path(self, name)

        pending = set(self.from_checkpoint_fields())
        if pending & {"width", "num_heads", "image_size", "patch_size"}:
            return self._validate_switches()
        if self.width % self.num_heads:
            raise ValueError(
                f"{f('width')}={self.width} is not divisible by {f('num_heads')}={self.num_heads}: "
                f"set {f('width')} to a multiple of {self.num_heads} (e.g. "
                f"{(self.width // self.num_heads + 1) * self.num_heads}) or choose a {f('num_heads')} "
                f"that divides {self.width}."
            )
        if self.image_size % self.patch_size and self.family != "siglip":  # SigLIP floors (So400m: 384 px, 14 px patches)
            raise ValueError(
                f"{f('image_size')}={self.image_size} is not divisible by {f('patch_size')}="
                f"{self.patch_size}: use an image size that is a multiple of the patch size (e.g. "
                f"{(self.image_size // self.patch_size) * self.patch_size})."
            )
        if "family" not in pending and self.family not in FAMILIES:
            raise ValueError(f"{f('family')}={self.family!r} is not supported: choose one of {list(FAMILIES)} "
                             f"(or '{FROM_CHECKPOINT}' to take the fine-tune checkpoint's).")
        if self.family == "siglip" and self.embed_dim != self.width:
            raise ValueError(f"{f('family')}=siglip has no projection, so {f('embed_dim')}={self.embed_dim} must "
                             f"equal {f('width')}={self.width}: set {f('embed_dim')}={self.width}.")
        if "activation" not in pending and self.activation not in ACTIVATIONS:
            raise ValueError(f"{f('activation')}={self.activation!r} is not supported: choose one of "
                             f"{list(ACTIVATIONS)} (or '{FROM_CHECKPOINT}' to take the fine-tune checkpoint's).")
        for name in ("image_size", "patch_size", "num_channels", "width", "num_layers", "num_heads",
                     "mlp_dim", "embed_dim"):
            if name not in pending and getattr(self, name) < 1:
                raise ValueError(f"{f(name)}={getattr(self, name)} must be >= 1.")
        if "layernorm_eps" not in pending and self.layernorm_eps < 0:
            raise ValueError(f"{f('layernorm_eps')}={self.layernorm_eps} must be > 0.")
        self._validate_switches()

    def _validate_switches(self) -> None:
        for name, value, allowed in (
            ("transformer_impl", self.transformer_impl, TRANSFORMER_IMPLS),
            ("fp8_recipe", self.fp8_recipe, FP8_RECIPES),
            ("params_dtype", self.params_dtype, PARAMS_DTYPES),
        ):
            if value not in allowed:
                raise ValueError(f"{field_path(self, name)}={value!r} is not supported: choose one of {list(allowed)}.")
        if self.fp8 and self.transformer_impl == "local" and not self.fp8_fallback:
            raise ValueError(
                f"{field_path(self, 'fp8')}=true needs {field_path(self, 'transformer_impl')}='transformer_engine' or "
                f"'auto' (the local layers have no FP8 GEMMs): change transformer_impl or set "
                f"{field_path(self, 'fp8')}=false."
            )


# Real CLIP widths/depths/heads/MLP sizes (OpenAI CLIP / open_clip); embed_dim is CLIP's joint size.
PRESETS: dict[str, ViTConfig] = {
    "tiny": ViTConfig(),
    "B/16": ViTConfig(image_size=224, patch_size=16, width=768, num_layers=12, num_heads=12, mlp_dim=3072,
                      embed_dim=512),
    "L/14": ViTConfig(image_size=224, patch_size=14, width=1024, num_layers=24, num_heads=16, mlp_dim=4096,
                      embed_dim=768),
    "H/14": ViTConfig(image_size=224, patch_size=14, width=1280, num_layers=32, num_heads=16, mlp_dim=5120,
                      embed_dim=1024),
    "g/14": ViTConfig(image_size=224, patch_size=14, width=1408, num_layers=40, num_heads=16, mlp_dim=6144,
                      embed_dim=1024),
    # SigLIP / SigLIP2 towers (google/siglip[2]-base-patch16-224, google/siglip[2]-so400m-patch14-384)
    "siglip-B/16": ViTConfig(family="siglip", image_size=224, patch_size=16, width=768, num_layers=12,
                             num_heads=12, mlp_dim=3072, embed_dim=768, activation="gelu_tanh", layernorm_eps=1e-6),
    "siglip-So400m/14": ViTConfig(family="siglip", image_size=384, patch_size=14, width=1152, num_layers=27,
                                  num_heads=16, mlp_dim=4304, embed_dim=1152, activation="gelu_tanh",
                                  layernorm_eps=1e-6),
}
