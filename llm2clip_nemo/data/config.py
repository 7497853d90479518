"""Typed config of the training stream (one dataclass; every field documented).

Only what a user chooses: what the run fills in (the output kind, the teacher's fingerprint and
embedding size) are arguments of `ImageTextStream`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config.loader import ConfigError
from ..config.paths import field_path
from .transforms import TransformConfig

OUTPUTS = ("captions", "embeddings")
"""What a stream adds to each batch: caption text (online teacher) or sidecar embeddings (offline);
chosen by the model from its teacher mode (`ImageTextStream(..., output=)`), not a config field."""


@dataclass
class StreamConfig:
    DERIVED: ClassVar[dict[str, str]] = {
        "output": "chosen by the model from model.teacher_mode (offline: embeddings, online: captions)",
        "teacher_fingerprint": "the configured teacher's, computed when the model builds its stream",
        "teacher_dim": "the teacher's hidden size, read when the model is built",
    }
    """Former fields that a run fills in (`config.loader.refuse_derived`)."""
    CONFIG_PATH: ClassVar[str] = "data"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    urls: str = ""
    """Shards: brace patterns, directories or manifest.json files; several sources joined by '::'
    (open_clip style), e.g. 'laion/{000000..099999}.tar::recap/{00000..09999}.tar'. An energon-prepared
    dataset dir (with .nv-meta/) or an energon metadataset .yaml is a source too, with an optional
    '#split' (default train), e.g. '/data/coco#train::/data/blend.yaml' (see data/energon.py)."""
    upsampling_factors: str | None = None
    """One factor per source, '::'-separated (open_clip's --train-data-upsampling-factors). A source's
    share is proportional to its shard count x factor. In epoch mode a factor is a per-epoch repeat
    count (fractions drawn per shard by seed and epoch)."""
    weights: str | None = None
    """One weight per source, '::'-separated: expected shares of samples (energon's blend rule), e.g.
    '1::3' = a quarter of the samples from the first source whatever its shard sizes. Excludes
    upsampling_factors. Each sample's source is drawn by weight; an energon blend splits its part's
    weight by its own blend weights."""
    blend: bool = True
    """False: sources are concatenated, not mixed: an energon metadataset blend's weights and
    data.weights are ignored and every shard is read once per epoch (energon's val mode); the
    validation stream sets it."""
    resampled: bool = True
    """True: draw shards with replacement forever (open_clip --dataset-resampled). False: epoch mode,
    every shard once per epoch, split by rank and worker."""
    epochs: int | None = None
    """Epoch mode only: stop after this many epochs; None loops forever (the trainer counts steps)."""
    seed: int = 0
    """Seeds shard order, interleaving, shuffling, crops and caption choice (with epoch and position)."""
    batch_size: int = 32
    """Samples per batch per rank (batches are built in the loader workers)."""
    slots: int | None = None
    """Data slots: the global batch is cut into this many equal parts, each read by its own fixed
    readers (shard split, shuffles, skips: one `num_workers`-long row of readers per slot), and each
    rank reads slots / world size of them, concatenated in slot order. None: the world size of the run
    that starts the stream. A saved position resumes exactly (the same global batches, in the same
    order) at any world size dividing the saved slot count, e.g. 8 ranks -> 4, 2, 1; start with a
    multiple of today's world size (e.g. 64 on 8 ranks) to be able to grow to it later. Setting a
    different value on resume starts the stream afresh (positions cannot be mapped)."""
    drop_last: bool = False
    """Drop a worker's final partial batch (finite epoch mode only)."""
    shard_shuffle: bool = True
    """Epoch mode: shuffle the shard order each epoch (seed, epoch)."""
    open_shards: int = 4
    """Shards each worker reads at once, interleaved at random: mixes samples across shards."""
    shuffle_buffer: int = 1000
    """Samples shuffled together (a window per worker). Resuming re-reads at most one window."""
    caption_fields: dict[str, float] = field(default_factory=lambda: {"txt": 1.0})
    """Caption field -> weight. 'txt' is the alt text; other names are json keys ('long', 'short_list').
    Overrides merge into the default {txt: 1.0}: set caption_fields.txt=0 to leave alt text out."""
    caption_sampling: str = "one"
    """'one': one caption field per sample per step, drawn by caption_fields' weights (LLM2CLIP).
    'all': every weighted field of the sample at once, as K positives of a multi-positive loss (FLAME);
    batches then carry "captions" [B][K], "caption_mask" [B,K] and (embeddings) teacher_emb [B,K,dim]."""
    sidecar_dir: str | None = None
    """Offline teacher (sidecar embeddings): directory of the .emb.tar sidecars; None: next to each image shard."""
    check_paths: bool = True
    """Check every local shard is readable when the stream is built (one stat per shard)."""
    no_valid_error_after: int = 512
    """Raise if a source has produced this many items and not one valid sample."""
    log_first: int = 3
    """Log the first N skips of each reason in full; after that only periodic totals."""
    log_interval_s: float = 120.0
    """Seconds between periodic skip-total log lines per worker."""
    transform: TransformConfig = field(default_factory=TransformConfig)
    """Image transform (size, crop, normalisation)."""

    def validate(self) -> None:
        """ConfigError naming the field by its path in the recipe (`config.paths.field_path`), the value and the fix."""
        def f(name: str) -> str:
            return field_path(self, name)

        if self.caption_sampling not in ("one", "all"):
            raise ConfigError(f"{f('caption_sampling')}={self.caption_sampling!r}: choose one (a field per sample "
                              "per step) or all (every caption field as a positive)")
        if self.slots is not None and self.slots < 1:
            raise ConfigError(f"{f('slots')}={self.slots} must be >= 1 or null (the world size)")
        for name in ("batch_size", "open_shards", "shuffle_buffer", "no_valid_error_after"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{f(name)}={getattr(self, name)} must be >= 1")
        if self.weights not in (None, "") and self.upsampling_factors not in (None, ""):
            raise ConfigError(
                f"{f('weights')}={self.weights!r} and {f('upsampling_factors')}={self.upsampling_factors!r} are both "
                f"set; choose one mixing rule: weights (sample shares) or upsampling_factors (open_clip, per shard)"
            )
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"{f('epochs')}={self.epochs} must be >= 1 or null (forever)")
        if not self.caption_fields or sum(self.caption_fields.values()) <= 0 or min(self.caption_fields.values()) < 0:
            raise ConfigError(f"{f('caption_fields')}={dict(self.caption_fields)} needs weights >= 0, not all 0, "
                              "e.g. {txt: 1.0}")
        self.transform.validate()
