"""The LLM2CLIP adapter: frozen-teacher caption embeddings -> the joint CLIP space.

L2-normalised LLM embedding -> N pre-LN residual MLP blocks (d -> expansion*d -> d, GELU)
-> LayerNorm -> Linear to the joint dimension. With d=4096, 4 blocks and joint 1280 this is the
paper's ~273M-parameter adapter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config.paths import field_path


@dataclass
class AdapterConfig:
    """Shape of the trainable text-side adapter on top of the frozen LLM teacher. Its two sizes are not
    config fields: the input is the teacher's hidden size (read when the teacher is loaded,
    `text.config.teacher_hidden_size`) and the output the vision tower's `embed_dim`."""

    CONFIG_PATH: ClassVar[str] = "model.adapter"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    DERIVED: ClassVar[dict[str, str]] = {
        "input_dim": "the teacher's hidden size, read from the teacher when the model is built",
        "joint_dim": "model.vision.embed_dim (both towers project into the same space)",
    }
    """Former fields whose values now come from elsewhere (`config.loader.refuse_derived`)."""

    num_blocks: int = 4
    """Residual MLP blocks (the paper uses 4)."""
    expansion: int = 2
    """MLP hidden size as a multiple of the input size, the teacher's hidden size (the paper: d -> 2d -> d)."""
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
        if self.expansion < 1:
            raise ValueError(f"{field_path(self, 'expansion')}={self.expansion} must be >= 1.")
        if self.num_blocks < 0:
            raise ValueError(f"{field_path(self, 'num_blocks')}={self.num_blocks} must be >= 0.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{field_path(self, 'dropout')}={self.dropout} must be in [0, 1).")

    def num_params(self, input_dim: int, joint_dim: int) -> int:
        """Parameter count for a teacher of hidden size `input_dim` and a joint space of `joint_dim`."""
        d, h = input_dim, self.expansion * input_dim
        block = 2 * d + (d * h + h) + (h * d + d)
        return self.num_blocks * block + 2 * d + d * joint_dim + (joint_dim if self.proj_bias else 0)


def check_teacher_dim(input_dim: int, teacher_dim: int) -> None:
    """ValueError if teacher embeddings of size `teacher_dim` reach an adapter built for `input_dim`
    (embeddings of another teacher, e.g. stale sidecars)."""
    if input_dim != teacher_dim:
        raise ValueError(
            f"teacher embeddings have size {teacher_dim} but the adapter was built for the teacher's hidden size "
            f"{input_dim}: embed the captions with the teacher the model was built with (model.teacher.path)."
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

    def __init__(self, cfg: AdapterConfig, input_dim: int, joint_dim: int) -> None:
        """Build from a validated `cfg` for a teacher of hidden size `input_dim` and a joint space of
        `joint_dim` (the vision tower's embed_dim). ValueError for a size < 1."""
        super().__init__()
        cfg.validate()
        for name, value in (("input_dim", input_dim), ("joint_dim", joint_dim)):
            if value < 1:
                raise ValueError(f"the adapter's {name}={value} must be >= 1.")
        self.cfg, self.input_dim, self.joint_dim = cfg, int(input_dim), int(joint_dim)
        d = self.input_dim
        self.blocks = nn.ModuleList(
            AdapterBlock(d, cfg.expansion * d, cfg.dropout, cfg.layernorm_eps) for _ in range(cfg.num_blocks)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.layernorm_eps)
        self.proj = nn.Linear(d, self.joint_dim, bias=cfg.proj_bias)

    def forward(self, teacher_embedding: torch.Tensor) -> torch.Tensor:
        """Map teacher embeddings [..., input_dim] (any float dtype; computed in the adapter's dtype) to
        [..., joint_dim]. ValueError (`check_teacher_dim`) for another embedding size."""
        if teacher_embedding.shape[-1] != self.input_dim:
            check_teacher_dim(self.input_dim, teacher_embedding.shape[-1])
        x = teacher_embedding.to(self.proj.weight.dtype)
        if self.cfg.normalize_input:
            x = F.normalize(x, dim=-1)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x))
