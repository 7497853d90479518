"""Typed config of stage 1's `CaptionContrastiveModel` (`model.*` of the caption-contrastive recipe).

Kept apart from the model so that `--help`, `plan` and config loading import no NeMo.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..config import ConfigError
from ..config.paths import config_path, field_path, set_config_path
from ..engine.ema import EmaConfig
from ..engine.optim import OptimConfig
from .caption_encoder import EncoderConfig

DEMO = "demo"
DEFAULT_INSTRUCTION = "Given a caption, retrieve a detailed relevant caption"


@dataclass
class CaptionDataConfig:
    CONFIG_PATH: ClassVar[str] = "model.data"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    train_path: str = DEMO
    """Training captions: webdataset shards (dir, brace pattern, manifest, `a::b`) or JSONL
    ({id, captions} per line); 'demo' = the embedded Twemoji dataset's train split (built on first use)."""
    val_path: str = DEMO
    """Held-out captions for CRA (same formats; 'demo' = the demo test split, held-out concepts)."""
    short_fields: list[str] = field(default_factory=lambda: ["txt"])
    """Short-caption fields ('txt' = alt text member; others are json keys, lists allowed)."""
    long_fields: list[str] = field(default_factory=lambda: ["long"])
    """Long/dense-caption fields (json keys)."""
    negative_group_field: str | None = None
    """json field: hard negatives come from another image with the same value (demo: subgroup)."""
    global_batch_size: int = 512
    """Triples per optimizer step over all data-parallel ranks (must divide by the rank count)."""
    hard_negatives: int = 1
    """Hard negatives per query (0 or 1): a caption of another image, besides in-batch negatives."""
    max_length: int = 512
    """Token budget per text, instruction included."""
    instruction: str = DEFAULT_INSTRUCTION
    """Instruction before queries only ('<instruction>: <query>'); its tokens are not pooled. '' = none."""
    val_max_images: int = 0
    """Cap on held-out images used for CRA (0 = all)."""
    val_batch_size: int = 64
    """Captions per forward when computing CRA."""
    seed: int = 0
    """Seed of the batch schedule (batch k is a function of seed and k)."""

    def pair_config(self):
        from ..data.pairs import PairConfig

        pairs = PairConfig(short_fields=list(self.short_fields), long_fields=list(self.long_fields),
                           instruction=self.instruction or None, seed=self.seed,
                           negative_group_field=self.negative_group_field)
        return set_config_path(pairs, config_path(self))  # its fields are this config's (model.data.short_fields)

    def check_paths(self) -> None:
        """Called by the recipe, not at model build: a restored .nemo model needs no dataset."""
        for name in ("train_path", "val_path"):
            p = getattr(self, name)
            if p == DEMO or (p.endswith(".jsonl") and Path(p).is_file()):
                continue
            try:
                from ..data.spec import parse_sources

                parse_sources(p)
            except Exception as e:
                raise ConfigError(f"{field_path(self, name)}={p!r} does not exist or holds no shards ({e}): build the "
                                  f"dataset first (e.g. `llm2clip-nemo data demo`) or set {field_path(self, name)}={DEMO} "
                                  "for the embedded demo.") from None

    def validate(self) -> None:
        if self.global_batch_size < 1 or self.hard_negatives not in (0, 1):
            raise ConfigError(f"{field_path(self, 'global_batch_size')}={self.global_batch_size} must be >= 1 and "
                              f"{field_path(self, 'hard_negatives')}={self.hard_negatives} 0 or 1.")


@dataclass
class CaptionContrastiveModelConfig(EncoderConfig):
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=2e-4, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0, warmup_steps=300, schedule="constant", grad_clip=1.0))
    """Stage 1's defaults: AdamW as torch's (eps 1e-8), no weight decay on the LoRA weights, warmup then constant."""
    ema: EmaConfig = field(default_factory=EmaConfig)
    data: CaptionDataConfig = field(default_factory=CaptionDataConfig)


def check_global_batch(data: CaptionDataConfig, world: int) -> int:
    """Local batch per rank; ConfigError naming `data`'s global_batch_size (by its recorded path,
    `config.paths`) when the `world` ranks do not divide it."""
    global_batch = data.global_batch_size
    if global_batch % world:
        raise ConfigError(f"{field_path(data, 'global_batch_size')}={global_batch} is not divisible by the {world} "
                          f"data-parallel ranks: use a multiple of {world}, e.g. {max(world, global_batch // world * world)}.")
    return global_batch // world
