"""Exponential moving average (EMA) of the trainable weights (issue 18 item 3).

After optimizer step t (t = 0, 1, ... counts the EMA updates done before this one):

    ema <- d_t * ema + (1 - d_t) * w,    d_t = decay * min(1, t / warmup_steps)   (warmup_steps > 0)
                                         d_t = decay                              (warmup_steps = 0)

The EMA starts as a copy of the initial weights. With a warm-up, d_0 = 0, so after the first step
the EMA equals the trained weights whatever the initialisation, and the averaging window 1/(1-d_t)
grows linearly to its full 1/(1-decay) steps at t = warmup_steps, the way the learning rate warms
up. (TensorFlow's `tf.train.ExponentialMovingAverage(decay, num_updates=t)` ramps with
d_t = min(decay, (1+t)/(10+t)) instead; its ramp length, about 10/(1-decay) updates, is set by
the decay rather than chosen. Polyak & Juditsky 1992 for averaging the iterates.)
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import ConfigError
from ..config.paths import field_path


@dataclass
class EmaConfig:
    """`model.ema.*`: an EMA of the trainable weights, used for validation and selectable at export."""

    CONFIG_PATH: ClassVar[str] = "model.ema"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    enabled: bool = False
    """Keep an EMA of the trainable weights (one more copy of them, in their dtype); validation uses it."""
    decay: float = 0.999
    """Full decay d: the EMA averages over about 1/(1-d) optimizer steps."""
    warmup_steps: int = 0
    """Steps over which the decay ramps linearly from 0 to `decay` (0 = `decay` from the first step)."""

    def validate(self) -> None:
        if not 0 < self.decay < 1 or self.warmup_steps < 0:
            raise ConfigError(f"{field_path(self, 'decay')}={self.decay} must be in (0, 1) and "
                              f"{field_path(self, 'warmup_steps')}={self.warmup_steps} >= 0 (e.g. decay=0.999, warmup_steps=1000).")


def ema_decay(t: int, cfg: EmaConfig) -> float:
    """d_t of the module docstring for the update after `t` earlier updates."""
    if cfg.warmup_steps <= 0:
        return cfg.decay
    return cfg.decay * min(1.0, t / cfg.warmup_steps)


class EMA:
    """Shadow copies of named parameters. `update()` after each optimizer step; `applied()` swaps the
    shadows into the parameters for a block (validation, export) and restores the trained values
    bit-exactly after it."""

    def __init__(self, named_parameters: Iterable[tuple[str, torch.nn.Parameter]], cfg: EmaConfig):
        self.cfg = cfg
        self.params = {n: p for n, p in named_parameters}
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}
        self.updates = 0

    def _follow(self) -> None:
        """Keep each shadow on its parameter's device (the outer loop may move the model after we copied it)."""
        for n, p in self.params.items():
            if self.shadow[n].device != p.device:
                self.shadow[n] = self.shadow[n].to(p.device)

    @torch.no_grad()
    def update(self) -> float:
        """One EMA step from the current parameter values; returns the d_t used."""
        self._follow()
        d = ema_decay(self.updates, self.cfg)
        for n, p in self.params.items():
            self.shadow[n].mul_(d).add_(p.detach().to(self.shadow[n].dtype), alpha=1.0 - d)
        self.updates += 1
        return d

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the parameters hold the EMA values; afterwards the trained values again."""
        self._follow()
        saved = {n: p.detach().clone() for n, p in self.params.items()}
        try:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(self.shadow[n])
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(saved[n])

    def state_dict(self) -> dict:
        """{"updates": int, "shadow": {parameter name: tensor}} (tensors on CPU)."""
        return {"updates": self.updates, "shadow": {n: s.detach().cpu().clone() for n, s in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; KeyError naming the difference when the parameter names differ."""
        got, want = set(state["shadow"]), set(self.shadow)
        if got != want:
            raise KeyError(f"EMA state does not fit the model: missing {sorted(want - got)[:6]}, "
                           f"unexpected {sorted(got - want)[:6]}.")
        for n, s in state["shadow"].items():
            self.shadow[n] = s.to(self.shadow[n].device, self.shadow[n].dtype).clone()
        self.updates = int(state["updates"])
