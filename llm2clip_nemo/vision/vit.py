"""The CLIP vision tower on megatron-core's TransformerBlock.

Layout, one to one with Hugging Face `CLIPVisionModelWithProjection` (see formats/clip_vision.py):
  patch_embed (conv, no bias) -> [class_token; patches] + position_embeddings -> pre_layernorm
  -> decoder (megatron TransformerBlock, pre-LN blocks, no final norm) -> post_layernorm(CLS)
  -> projection (no bias).
The siglip family (`ViTConfig.family`), one to one with Hugging Face `SiglipVisionModel`
(see convert/siglip_vision.py):
  patch_embed (conv, bias) -> patches + position_embeddings -> decoder -> post_layernorm (every
  token) -> head (attention pooling: a learned probe attends over the tokens, then LN + MLP residual)
  -> no projection.
Megatron's [seq, batch, hidden] layout stays inside `encode_tokens`; the public methods take
pixels [B, C, H, W] and return [B, dim].
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ViTConfig
from .specs import (
    activation_function,
    from_canonical_keys,
    layer_spec,
    resolve_impl,
    to_canonical_keys,
    transformer_config,
)

if TYPE_CHECKING:
    from llm2clip_nemo.runtime import ParallelLayout


def _run_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(hidden_states=x, attention_mask=None)[0]


class _HeadMLP(nn.Module):
    def __init__(self, width: int, mlp_dim: int, activation: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim, dtype=dtype)
        self.fc2 = nn.Linear(mlp_dim, width, dtype=dtype)
        self.act = activation_function(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AttentionPoolingHead(nn.Module):
    """SigLIP's multihead attention pooling (MAP) head (Zhai et al. 2023; HF
    `SiglipMultiheadAttentionPoolingHead`): a learned probe [1, 1, W] attends over the tokens
    (torch MultiheadAttention, biases on), then h + MLP(LayerNorm(h)). Tokens [B, S, W] -> [B, W]."""

    def __init__(self, cfg: ViTConfig, dtype: torch.dtype) -> None:
        super().__init__()
        w = cfg.width
        self.probe = nn.Parameter(torch.empty(1, 1, w, dtype=dtype))
        self.attention = nn.MultiheadAttention(w, cfg.num_heads, batch_first=True, dtype=dtype)
        self.layernorm = nn.LayerNorm(w, eps=cfg.layernorm_eps, dtype=dtype)
        self.mlp = _HeadMLP(w, cfg.mlp_dim, cfg.activation, dtype)
        nn.init.normal_(self.probe, std=w**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        probe = self.probe.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        h = self.attention(probe, tokens, tokens, need_weights=False)[0]
        return (h + self.mlp(self.layernorm(h)))[:, 0]


class VisionTransformer(nn.Module):
    """CLIP or SigLIP ViT. `forward(pixels) -> [B, embed_dim]` un-normalised image embeddings."""

    def __init__(self, cfg: ViTConfig, groups: ParallelLayout) -> None:
        """Build from `cfg` on `groups.vision_pg_collection` (runtime.ParallelLayout): the ViT's own
        megatron groups, tensor-parallel size 1 whatever the teacher's, on `groups.device`."""
        super().__init__()
        from megatron.core.transformer.transformer_block import TransformerBlock

        cfg.validate()
        self.cfg = cfg
        self.impl = resolve_impl(cfg)
        self.tconfig = transformer_config(cfg)
        self.fp8 = self.tconfig.fp8 is not None
        # activation checkpointing on CPU goes through torch.utils.checkpoint (see specs.py)
        self._torch_recompute = cfg.recompute and self.tconfig.recompute_granularity is None
        dtype = self.tconfig.params_dtype
        w = cfg.width
        self.siglip = cfg.family == "siglip"
        self.patch_embed = nn.Conv2d(cfg.num_channels, w, cfg.patch_size, cfg.patch_size, bias=self.siglip,
                                     dtype=dtype)
        if not self.siglip:
            self.class_token = nn.Parameter(torch.empty(w, dtype=dtype))
        self.position_embeddings = nn.Parameter(torch.empty(cfg.seq_len, w, dtype=dtype))
        self.pre_layernorm = nn.Identity() if self.siglip else nn.LayerNorm(w, eps=cfg.layernorm_eps, dtype=dtype)
        self.decoder = TransformerBlock(
            config=self.tconfig,
            spec=layer_spec(self.impl),
            post_layer_norm=False,  # CLIP normalises only the pooled CLS token (post_layernorm)
            pre_process=True,
            post_process=True,
            pg_collection=groups.vision_pg_collection,
        )
        self.post_layernorm = nn.LayerNorm(w, eps=cfg.layernorm_eps, dtype=dtype)
        if self.siglip:
            self.head = AttentionPoolingHead(cfg, dtype)
            self.projection = nn.Identity()  # SiglipVisionModel's pooler_output is the image embedding
        else:
            self.projection = nn.Linear(w, cfg.embed_dim, bias=False, dtype=dtype)
        self._init_own_weights()
        self.to(groups.device)

    def _init_own_weights(self) -> None:
        # open_clip's scales; the transformer blocks are initialised by megatron (init_method_std).
        scale = self.cfg.width**-0.5
        nn.init.normal_(self.position_embeddings, std=scale)
        nn.init.normal_(self.patch_embed.weight, std=self.cfg.init_std)
        if self.siglip:
            nn.init.zeros_(self.patch_embed.bias)
            return
        nn.init.normal_(self.class_token, std=scale)
        nn.init.normal_(self.projection.weight, std=scale)

    def encode_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, C, H, W] -> transformer output [seq, B, width] (megatron layout, internal)."""
        cfg = self.cfg
        if pixels.dim() != 4 or pixels.shape[1] != cfg.num_channels or pixels.shape[-2:] != (
            cfg.image_size, cfg.image_size
        ):
            raise ValueError(
                f"expected pixels [B, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size}] "
                f"(vision.image_size={cfg.image_size}), got {list(pixels.shape)}: resize the images "
                "or set vision.image_size."
            )
        b = pixels.shape[0]
        if self.fp8 and (b * cfg.seq_len) % 16:
            raise ValueError(
                f"FP8 GEMMs need batch*tokens divisible by 16; batch {b} x {cfg.seq_len} tokens is not: "
                "use a per-rank batch that is a multiple of 16."
            )
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype))  # [B, W, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, g*g, W]
        if not self.siglip:
            x = torch.cat([self.class_token.to(x.dtype).expand(b, 1, -1), x], dim=1)
        x = x + self.position_embeddings.to(x.dtype)
        x = self.pre_layernorm(x)
        x = x.transpose(0, 1).contiguous()  # megatron wants [seq, batch, hidden]
        if self._torch_recompute and self.training and torch.is_grad_enabled():
            for layer in self.decoder.layers:
                x = checkpoint(_run_layer, layer, x, use_reentrant=False)
            return x
        return self.decoder(hidden_states=x, attention_mask=None)

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> [B, width] (HF `pooler_output`), before projection: the post-LayerNorm CLS token,
        or (siglip) the attention-pooling head over every post-LayerNorm token."""
        tokens = self.encode_tokens(pixels)
        if self.siglip:
            return self.head(self.post_layernorm(tokens).transpose(0, 1))
        return self.post_layernorm(tokens[0])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, C, H, W] -> image embeddings [B, embed_dim], not L2-normalised."""
        return self.projection(self.pooled(pixels))

    def canonical_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict in the canonical (local-spec) key layout, whatever the layer implementation."""
        return to_canonical_keys(self.state_dict(), self.impl)

    def load_canonical_state_dict(self, sd: dict[str, torch.Tensor], strict: bool = True) -> nn.modules.module._IncompatibleKeys:
        """Load a canonical-layout state dict (e.g. from `formats.vision_checkpoint.vit_from_hf`).

        With the TE layout the FP8 `_extra_state` entries are allowed to be missing.
        """
        result = self.load_state_dict(from_canonical_keys(sd, self.impl), strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if strict and (missing or result.unexpected_keys):
            raise KeyError(
                f"state dict does not fit this ViT: missing {missing[:8]}, unexpected "
                f"{result.unexpected_keys[:8]}: check that its config matches vision.*."
            )
        return result


def build_vit(cfg: ViTConfig, groups: ParallelLayout) -> VisionTransformer:
    """Build the vision tower for `cfg` on `groups` (runtime.ParallelLayout)."""
    return VisionTransformer(cfg, groups)
