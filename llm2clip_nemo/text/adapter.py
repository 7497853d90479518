"""The LLM2CLIP adapter: frozen-teacher caption embeddings -> the joint CLIP space.

L2-normalised LLM embedding -> N pre-LN residual MLP blocks (d -> expansion*d -> d, GELU)
-> LayerNorm -> Linear to the joint dimension. With d=4096, 4 blocks and joint 1280 this is the
paper's ~273M-parameter adapter.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AdapterConfig:
    """Shape of the trainable text-side adapter on top of the frozen LLM teacher."""

    input_dim: int = 576
    """Teacher embedding size (the LLM's hidden size: 576 for SmolLM2-135M, 4096 for Llama-3-8B)."""
    joint_dim: int = 128
    """Joint embedding size; must equal the vision tower's `embed_dim`."""
    num_blocks: int = 4
    """Residual MLP blocks (the paper uses 4)."""
    expansion: int = 2
    """MLP hidden size as a multiple of `input_dim` (the paper: d -> 2d -> d)."""
    dropout: float = 0.0
    """Dropout inside each block's MLP."""
    layernorm_eps: float = 1e-5
    """Epsilon of the LayerNorms."""
    normalize_input: bool = True
    """L2-normalise the teacher embedding first (the paper does)."""
    proj_bias: bool = False
    """Bias on the final projection (CLIP projections have none)."""

    def validate(self) -> None:
        """Raise ValueError naming the field and the fix."""
        for name in ("input_dim", "joint_dim", "expansion"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.adapter.{name}={getattr(self, name)} must be >= 1.")
        if self.num_blocks < 0:
            raise ValueError(f"model.adapter.num_blocks={self.num_blocks} must be >= 0.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.adapter.dropout={self.dropout} must be in [0, 1).")

    def num_params(self) -> int:
        """Parameter count, from the config alone."""
        d, h = self.input_dim, self.expansion * self.input_dim
        block = 2 * d + (d * h + h) + (h * d + d)
        return self.num_blocks * block + 2 * d + d * self.joint_dim + (self.joint_dim if self.proj_bias else 0)


def check_teacher_dim(cfg: AdapterConfig, teacher_dim: int) -> None:
    """Raise if the adapter's input size is not the teacher's hidden size (a common user error)."""
    if cfg.input_dim != teacher_dim:
        raise ValueError(
            f"model.adapter.input_dim={cfg.input_dim} does not match the teacher's embedding size "
            f"{teacher_dim}: set model.adapter.input_dim={teacher_dim}."
        )


class AdapterBlock(nn.Module):
    """x + MLP(LayerNorm(x)), MLP = Linear(d, h) -> GELU -> Linear(h, d)."""

    def __init__(self, dim: int, hidden: int, dropout: float, eps: float) -> None:
        """A residual pre-LN MLP block of width `dim` and hidden size `hidden`."""
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., dim] -> [..., dim]."""
        return x + self.fc2(self.dropout(F.gelu(self.fc1(self.norm(x)))))


class LLM2CLIPAdapter(nn.Module):
    """Teacher embedding [B, input_dim] -> text embedding [B, joint_dim] (not L2-normalised)."""

    def __init__(self, cfg: AdapterConfig) -> None:
        """Build from a validated `cfg`."""
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.input_dim
        self.blocks = nn.ModuleList(
            AdapterBlock(d, cfg.expansion * d, cfg.dropout, cfg.layernorm_eps) for _ in range(cfg.num_blocks)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.layernorm_eps)
        self.proj = nn.Linear(d, cfg.joint_dim, bias=cfg.proj_bias)

    def forward(self, teacher_embedding: torch.Tensor) -> torch.Tensor:
        """Map teacher embeddings (any float dtype; computed in the adapter's dtype)."""
        if teacher_embedding.shape[-1] != self.cfg.input_dim:
            check_teacher_dim(self.cfg, teacher_embedding.shape[-1])
        x = teacher_embedding.to(self.proj.weight.dtype)
        if self.cfg.normalize_input:
            x = F.normalize(x, dim=-1)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x))
