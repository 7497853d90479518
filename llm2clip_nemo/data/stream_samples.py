"""One raw shard item to one training sample, and samples to a batch, for the training stream.

A raw item is checked by the one sample reader (`samples.check_sample`), given a caption by the
caption policy (one field by weight, or every field with caption_sampling="all"), its image
transformed (decode faults become skips) and, for offline teachers, its sidecar vector attached.
Every skip is counted by reason in the worker's counts (`stream_state.empty_stats`) and logged in
a bounded way (`SkipLog`); a source that gives items but never a valid sample is an error
(`NoValidSamplesError`), raised once `no_valid_error_after` items were read or at the end of a pass.
"""
from __future__ import annotations

import copy
import functools
import logging
import random
import time

import torch

from ..config.paths import field_path
from .captions import CaptionPolicy
from .config import StreamConfig
from .images import ImageDecodeError
from .samples import check_sample
from .sidecar import SidecarReader, sidecar_path
from .spec import DataSourceError, Source
from .tario import RawSample
from .transforms import ImageTransform, normalize_batch, to_uint8_batch

log = logging.getLogger("llm2clip_nemo.data")


class NoValidSamplesError(DataSourceError):
    """A source produced items but not a single usable sample."""


class SkipLog:
    """Log the first few skips per reason in full, then periodic totals: bounded, never spammy."""

    def __init__(self, first: int, interval_s: float, worker: int):
        self.first, self.interval, self.worker = first, interval_s, worker
        self.seen: dict[str, int] = {}
        self.last = time.monotonic()

    def __call__(self, reason: str, where: str, stats: dict) -> None:
        n = self.seen[reason] = self.seen.get(reason, 0) + 1
        if n <= self.first:
            log.warning("data: skipped sample (%s) at %s%s", reason, where,
                        "; further skips of this kind are only counted" if n == self.first else "")
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            log.warning("data worker %d: skipped so far %s", self.worker, stats["skipped"])


class SampleMaker:
    """Turns raw items into sample dicts and sample dicts into batches (keys: see `ImageTextStream`).

    `output` "embeddings" attaches sidecar vectors, refusing sidecars of another `teacher_fingerprint`
    or `teacher_dim` (None skips that check)."""

    def __init__(self, cfg: StreamConfig, sources: list[Source], output: str,
                 teacher_fingerprint: str | None = None, teacher_dim: int | None = None):
        self.cfg, self.sources, self.output = cfg, sources, output
        self.teacher_fingerprint, self.teacher_dim = teacher_fingerprint, teacher_dim
        self.policy = CaptionPolicy(dict(cfg.caption_fields))
        self.transform = ImageTransform(cfg.transform)

    def check_sources(self, stats: dict, final: bool) -> None:
        """NoValidSamplesError for a source with items read but none valid (once enough were read, or `final`)."""
        for s, src in enumerate(self.sources):
            raw, valid = stats["raw"][s], stats["valid"][s]
            if valid == 0 and raw > 0 and (final or raw >= self.cfg.no_valid_error_after):
                top = sorted(stats["skipped"].items(), key=lambda kv: -kv[1])[:3]
                raise NoValidSamplesError(
                    f"data source {src.spec!r} gave {raw} items and no valid sample (skips so far: {dict(top)}); "
                    f"check its shards with `llm2clip-nemo data inspect {src.urls[0]}`, fix "
                    f"{field_path(self.cfg, 'caption_fields')} (now {dict(self.cfg.caption_fields)}) or drop the source from "
                    f"{field_path(self.cfg, 'urls')}"
                )

    def _skip(self, reason: str, item: RawSample, stats: dict, skiplog: SkipLog) -> None:
        stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
        skiplog(reason, f"{item.url}:{item.key or '#' + str(item.index)}", stats)

    def process(self, item: RawSample, src: int, rng: random.Random, stats: dict, skiplog: SkipLog,
                sidecars: dict) -> dict | None:
        """The sample dict of `item` (from source `src`), or None when skipped; updates `stats` in place.

        `rng` draws the caption and the image augmentation; `sidecars` caches open sidecar readers by url."""
        stats["raw"][src] += 1
        try:
            checked = check_sample(item, self.policy.fields)
            for r in checked.reasons:
                self._skip(r, item, stats, skiplog)
            s = checked.sample
            if s is None:
                return None
            picks = self.policy.choose_all(s.txt, s.meta, rng) if self.cfg.caption_sampling == "all" else None
            choice = next(c for c in picks if c is not None) if picks else self.policy.choose(s.txt, s.meta, rng)
            try:
                image = self.transform(s.image, rng)
            except ImageDecodeError as e:
                self._skip(e.reason, item, stats, skiplog)
                return None
            sample = {"key": item.key, "image": image, "caption": choice.text, "caption_field": choice.field,
                      "source": src, "url": item.url}
            if picks:
                sample["captions"] = [c.text if c else "" for c in picks]
                sample["caption_mask"] = [c is not None for c in picks]
            if self.output == "embeddings":
                reader = self._sidecar(item.url, sidecars)
                if picks:  # absent fields are zero rows in the sidecar (and masked)
                    sample["teacher_emb"] = torch.stack([reader.vector(item.key, f) for f in self.policy.fields])
                else:
                    sample["teacher_emb"] = reader.vector(item.key, choice.field)
            stats["valid"][src] += 1
            for c in picks or [choice]:
                if c is not None:
                    stats["fields"][c.field] = stats["fields"].get(c.field, 0) + 1
            return sample
        finally:
            self.check_sources(stats, final=False)

    def _sidecar(self, url: str, cache: dict) -> SidecarReader:
        r = cache.get(url)
        if r is None:
            if len(cache) >= 2 * self.cfg.open_shards:
                cache.pop(next(iter(cache))).close()
            r = cache[url] = SidecarReader(
                sidecar_path(url, self.cfg.sidecar_dir), fingerprint=self.teacher_fingerprint,
                dim=self.teacher_dim, fields=self.policy.fields, named=functools.partial(field_path, self.cfg),
            )
        return r

    def collate(self, buf: list[dict], stream_state: dict) -> dict:
        """One batch of the samples in `buf`, carrying `stream_state` (deep-copied: the worker goes on
        updating its own position and counts)."""
        images = to_uint8_batch([s["image"] for s in buf])
        batch = {
            "image": normalize_batch(images, self.cfg.transform.mean, self.cfg.transform.std),
            "key": [s["key"] for s in buf],
            "caption": [s["caption"] for s in buf],
            "caption_field": [s["caption_field"] for s in buf],
            "source": [s["source"] for s in buf],
            "url": [s["url"] for s in buf],
            "stream_state": copy.deepcopy(stream_state),
        }
        if self.cfg.caption_sampling == "all":
            batch["captions"] = [s["captions"] for s in buf]
            batch["caption_mask"] = torch.tensor([s["caption_mask"] for s in buf], dtype=torch.bool)
        if self.output == "embeddings":
            batch["teacher_emb"] = torch.stack([s["teacher_emb"] for s in buf])
        return batch
