"""Typed config of stage 2's `LLM2CLIPModel` (`model.*` of the pretrain/finetune recipes).

Kept apart from the model so that `--help`, `plan` and config loading import no NeMo or megatron.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from ..config import ConfigError
from ..config.paths import field_path
from ..data.config import StreamConfig
from ..engine.ema import EmaConfig
from ..engine.optim import OptimConfig
from ..engine.parallelize import ParallelizeConfig
from ..text.adapter import AdapterConfig
from ..text.config import TeacherConfig
from ..vision.config import ViTConfig


@dataclass
class LossConfig:
    CONFIG_PATH: ClassVar[str] = "model.loss"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    kind: str = "clip"
    """clip (symmetric InfoNCE, learnable temperature) | siglip (sigmoid, learnable scale and bias)."""
    init_logit_scale: float = math.log(1 / 0.07)
    """Initial log inverse temperature (CLIP: ln(1/0.07); SigLIP uses ln 10 when kind=siglip)."""
    max_logit_scale: float = math.log(100)
    """Clamp of the log scale (ln 100)."""

    def validate(self) -> None:
        if self.kind not in ("clip", "siglip"):
            raise ConfigError(f"{field_path(self, 'kind')}={self.kind!r}: choose clip or siglip.")


@dataclass
class ValidationConfig:
    urls: str = ""
    """Held-out shards for retrieval R@1/R@5 (empty = no validation)."""
    caption_field: str = "txt"
    """Caption field used as the retrieval text ('txt' alt text, 'long', ...)."""
    max_samples: int = 2000
    """Cap on held-out samples (every rank evaluates the same set)."""
    every_n_steps: int = 50
    """Validate every N optimizer steps (and at the end of training)."""
    image_size: int = 0
    """Eval resolution; 0 = model.vision.image_size."""
    sidecar_dir: str | None = None
    """Offline teacher: sidecars of the held-out shards (null = beside them)."""


@dataclass
class LLM2CLIPConfig:
    CONFIG_PATH: ClassVar[str] = "model"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    mode: str = "pretrain"
    """pretrain (ViT from scratch) | finetune (ViT initialised from init_from)."""
    init_from: str = ""
    """finetune: a Hugging Face CLIP vision checkpoint dir (or our export's vision/ dir)."""
    teacher_mode: str = "offline"
    """offline (sidecar embeddings, ~13x cheaper) | online (the TP teacher runs every step)."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    vision: ViTConfig = field(default_factory=ViTConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    parallel: ParallelizeConfig = field(default_factory=ParallelizeConfig)
    """How the network (ViT, adapter, logit scale) is parallelised over the vision data-parallel group,
    applied by the model itself before its optimizer is built (`engine.parallelize`; Lightning then
    leaves the module unwrapped): data_parallel ddp | fsdp2, activation_checkpointing, compile.
    The training state is checkpointed through DCP, so a run resumes under another layout."""
    train_ds: StreamConfig = field(default_factory=StreamConfig)
    validation_ds: ValidationConfig = field(default_factory=ValidationConfig)
    global_batch_size: int = 0
    """If > 0: samples per step over all ranks; must divide by the ranks (sets train_ds.batch_size)."""
    num_workers: int = 2
    """DataLoader workers per rank."""
    seed: int = 0
    """Seeds model init."""

    def validate(self) -> None:
        """Checks of the values alone (no files, no environment): ConfigError naming the field and the fix.
        The fine-tune checkpoint's architecture is adopted where the run starts
        (`recipes.train_clip.adopt_finetune_architecture`)."""
        if self.mode not in ("pretrain", "finetune"):
            raise ConfigError(f"{field_path(self, 'mode')}={self.mode!r}: choose pretrain or finetune.")
        if self.mode == "finetune" and not self.init_from:
            raise ConfigError(f"{field_path(self, 'mode')}=finetune needs {field_path(self, 'init_from')}=<Hugging Face CLIP vision checkpoint dir>.")
        if self.mode != "finetune" and self.vision.from_checkpoint_fields():
            f = self.vision.from_checkpoint_fields()[0]
            raise ConfigError(f"{field_path(self.vision, f)}={getattr(self.vision, f)!r} takes its value from a fine-tune "
                              f"checkpoint, but {field_path(self, 'mode')}={self.mode}: give {field_path(self.vision, f)} a value.")
        if self.teacher_mode not in ("offline", "online"):
            raise ConfigError(f"{field_path(self, 'teacher_mode')}={self.teacher_mode!r}: choose offline or online.")
        try:
            self.parallel.check_vision_recompute(self.vision)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def stream_output(self) -> str:
        """What the training stream hands the model: 'embeddings' (sidecars) offline, 'captions' online."""
        return "embeddings" if self.teacher_mode == "offline" else "captions"
