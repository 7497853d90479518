"""Optimisation settings both training stages share: AdamW, parameter groups, the LR schedule.

    groups = param_groups(model.named_parameters(), cfg, layer_of, num_layers)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    for g in opt.param_groups: g["lr"] = lr_at(step, cfg, max_steps) * g["lr_scale"]

Weight decay and the warmup + cosine schedule follow CLIP/open_clip (decay on weight matrices only;
linear warmup, then cosine to a floor); layer-wise lr decay follows BEiT/LLM2CLIP's fine-tune
(layer l of L gets lr * layer_decay^(L+1-l)). Stage 1 (LoRA) uses the same code with one group.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..config import ConfigError
from ..config.paths import field_path

SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    """`model.optim.*` of both stages (each stage's config sets its own defaults)."""

    CONFIG_PATH: ClassVar[str] = "model.optim"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    lr: float = 5e-4
    """Peak learning rate (AdamW), reached at the end of the warmup."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW (beta1, beta2)."""
    eps: float = 1e-6
    """AdamW epsilon."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay on weight matrices; none on biases, norms, logit scale/bias (1-D tensors)."""
    warmup_steps: int = 0
    """Linear warmup over this many optimizer steps: step s < warmup_steps uses lr * (s+1) / warmup_steps."""
    schedule: str = "cosine"
    """After warmup, until trainer.max_steps: cosine | linear (from lr down to min_lr_ratio * lr) | constant (lr)."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine and linear schedules, as a fraction of lr."""
    layer_decay: float = 1.0
    """Layer-wise lr decay of the ViT: layer l of L gets lr * layer_decay^(L+1-l) (0.85 in the paper's fine-tune; 1 = off)."""
    grad_clip: float = 1.0
    """Clip the global L2 norm of the gradients to this value before each step (0 = off)."""
    max_nonfinite_steps: int = 20
    """A NaN/inf loss on any data-parallel rank skips that optimizer step on every rank; more skipped steps than this abort the run."""

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"{field_path(self, 'schedule')}={self.schedule!r}: choose {', '.join(SCHEDULES)}.")
        if self.lr <= 0 or not 0 < self.layer_decay <= 1 or self.warmup_steps < 0:
            raise ConfigError(f"{field_path(self, 'lr')}={self.lr} must be > 0, {field_path(self, 'layer_decay')}={self.layer_decay} in (0, 1], "
                              f"{field_path(self, 'warmup_steps')}={self.warmup_steps} >= 0.")
        if not 0 <= self.min_lr_ratio <= 1 or self.grad_clip < 0 or self.max_nonfinite_steps < 0 or self.eps <= 0:
            raise ConfigError(f"{field_path(self, 'min_lr_ratio')}={self.min_lr_ratio} must be in [0, 1], "
                              f"{field_path(self, 'grad_clip')}={self.grad_clip} >= 0, "
                              f"{field_path(self, 'max_nonfinite_steps')}={self.max_nonfinite_steps} >= 0, "
                              f"{field_path(self, 'eps')}={self.eps} > 0.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{field_path(self, 'betas')}={list(self.betas)}: give two values in [0, 1), e.g. [0.9, 0.98].")


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate (float, same unit as cfg.lr) of optimizer step `step` (0-based) of a `max_steps` run.

    step < W (W = warmup_steps):  lr * (step + 1) / W
    after, with t = min((step - W) / max(max_steps - W, 1), 1) and m = min_lr_ratio:
      cosine:   lr * (m + (1 - m) * 0.5 * (1 + cos(pi * t)))
      linear:   lr * (m + (1 - m) * (1 - t))
      constant: lr
    (open_clip's `cosine_lr` with a floor; the expressions keep the float operation order of the
    stage-specific schedules they replace, so the golden losses stay bit-identical.)"""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    t = min(max(step - cfg.warmup_steps, 0) / max(max_steps - cfg.warmup_steps, 1), 1.0)
    m = cfg.min_lr_ratio
    shape = 0.5 * (1 + math.cos(math.pi * t)) if cfg.schedule == "cosine" else 1.0 - t
    return cfg.lr * (m + (1 - m) * shape)


def no_weight_decay(name: str, p: torch.Tensor) -> bool:
    """True for biases, norms and other 1-D tensors, and the loss's logit scale/bias."""
    return p.ndim < 2 or "logit_" in name or "norm" in name


def param_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], cfg: OptimConfig,
                 layer_of: Callable[[str], int] | None = None, num_layers: int = 0) -> list[dict]:
    """AdamW parameter groups of the trainable (requires_grad) parameters.

    One group per (layer id, no decay) pair, sorted by that key: `weight_decay` 0 for
    `no_weight_decay` tensors (else cfg.weight_decay) and `lr_scale` = layer_decay^(num_layers + 1 -
    layer id); `layer_of(name)` gives the layer id (0 = stem .. num_layers + 1 = head; None: every
    parameter is in the head, lr_scale 1). Each group also lists its parameter `names`."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        lid = num_layers + 1 if layer_of is None else layer_of(name)
        nd = no_weight_decay(name, p)
        if (lid, nd) not in groups:
            groups[(lid, nd)] = {"params": [], "names": [], "weight_decay": 0.0 if nd else cfg.weight_decay,
                                 "lr_scale": cfg.layer_decay ** (num_layers + 1 - lid)}
        groups[(lid, nd)]["params"].append(p)
        groups[(lid, nd)]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups` output (the `names` lists stay in the groups: AdamW ignores extra keys)."""
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
