"""Shared NeMo plumbing for our ModelPT classes (stage 1 and stage 2).

- NeMo 3.0's `restore_from` instantiates only allow-listed `_target_` prefixes
  (`UnsafeTargetError` otherwise): `allow_our_targets()` registers this package.
- Our typed dataclass configs become the DictConfig a ModelPT stores (and writes into .nemo
  archives), and come back as validated dataclasses on restore.
"""
from __future__ import annotations

from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

PACKAGE_PREFIX = "llm2clip_nemo."
T = TypeVar("T")


def allow_our_targets() -> None:
    """Let NeMo instantiate `llm2clip_nemo.*` classes from configs (idempotent)."""
    from nemo.core.classes import common

    if PACKAGE_PREFIX not in common.ALLOWED_TARGET_PREFIXES:
        common.ALLOWED_TARGET_PREFIXES.append(PACKAGE_PREFIX)


def to_dictconfig(obj) -> DictConfig:
    """A dataclass config as a plain (non-structured) DictConfig, so ModelPT may add `target` etc."""
    return OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(obj), resolve=True))


def from_dictconfig(schema: type[T], cfg, drop: tuple[str, ...] = ("target", "nemo_version")) -> T:
    """The validated dataclass of a ModelPT's DictConfig (keys NeMo adds are dropped)."""
    from ..config.loader import run_validators

    data = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    data = {k: v for k, v in data.items() if k not in drop}
    obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
    run_validators(obj)
    return obj


