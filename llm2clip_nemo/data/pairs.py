"""Stage-1 caption pairs: (query, positive, hard negative) triples from multi-caption samples.

LLM2CLIP's caption-contrastive fine-tune: two captions of the same image are a positive pair
(short alt-text-like vs long dense caption, direction drawn at random); a caption of another
image is the hard negative. Negatives are drawn from images sharing `negative_group_field`
when that json field is set (e.g. the emoji subgroup: "face-smiling" vs "face-smiling" is hard),
otherwise from any other image. Deterministic by (seed, epoch, record index).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

from torch.utils.data import Dataset

from ..config.paths import field_path
from .captions import CaptionPolicy
from .samples import check_sample
from .spec import parse_sources


@dataclass
class PairConfig:
    CONFIG_PATH: ClassVar[str] = "data"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    short_fields: list[str] = field(default_factory=lambda: ["txt", "short", "short_list"])
    """Fields holding short captions ('txt' = alt text; others are json keys; lists allowed)."""
    long_fields: list[str] = field(default_factory=lambda: ["long"])
    """Fields holding long/dense captions."""
    instruction: str | None = "Given a caption, retrieve a detailed relevant caption"
    """Task instruction prepended to queries (kept separate in the triple so pooling can skip it); None: none."""
    seed: int = 0
    """Seeds directions, caption picks and negatives (with the epoch)."""
    negative_group_field: str | None = None
    """json field: draw the hard negative from another image with the same value when there is one."""

    def validate(self) -> None:
        if not self.short_fields and not self.long_fields:
            raise ValueError(f"pairs: set {field_path(self, 'short_fields')} and/or {field_path(self, 'long_fields')}, "
                             "e.g. short_fields=[txt] long_fields=[long]")


@dataclass(frozen=True)
class CaptionRecord:
    key: str
    short: tuple[str, ...]
    long: tuple[str, ...]
    group: str | None = None


@dataclass(frozen=True)
class CaptionTriple:
    query: str
    positive: str
    negative: str
    direction: str
    """'short->long', 'long->short', 'short->short' or 'long->long'."""
    key: str
    negative_key: str
    instruction: str | None = None

    def query_text(self, sep: str = ": ") -> str:
        """The query as the LLM sees it: instruction + sep + query (or the bare query)."""
        return f"{self.instruction}{sep}{self.query}" if self.instruction else self.query


def _collect(fields: list[str], txt: str | None, meta: dict | None) -> tuple[str, ...]:
    out: list[str] = []
    for f in fields:
        for c in CaptionPolicy.candidates(f, txt, meta):
            if c not in out:
                out.append(c)
    return tuple(out)


def read_caption_records(urls: str, cfg: PairConfig) -> list[CaptionRecord]:
    """Captions of every sample `data.samples.check_sample` accepts (image bytes read past, not decoded)."""
    cfg.validate()
    recs = []
    for src in parse_sources(urls):
        for u in src.urls:
            for raw in src.read(u):
                # the one sample checker (images neither decoded nor required: stage 1 reads captions only)
                s = check_sample(raw, [*cfg.short_fields, *cfg.long_fields], require_image=False).sample
                if s is None:
                    continue
                group = s.meta.get(cfg.negative_group_field) if cfg.negative_group_field and s.meta else None
                recs.append(CaptionRecord(s.key, _collect(cfg.short_fields, s.txt, s.meta),
                                          _collect(cfg.long_fields, s.txt, s.meta), group if isinstance(group, str) else None))
    return recs


def make_triples(records: list[CaptionRecord], cfg: PairConfig, epoch: int = 0) -> list[CaptionTriple]:
    """One triple per record with at least two distinct captions (and another image to contrast)."""
    if len(records) < 2:
        raise ValueError(f"caption pairs need at least 2 images to draw negatives from, got {len(records)}")
    by_group: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.group is not None:
            by_group.setdefault(r.group, []).append(i)
    out = []
    for i, r in enumerate(records):
        rng = random.Random(f"pairs:{cfg.seed}:{epoch}:{i}")
        if r.short and r.long:
            if rng.random() < 0.5:
                q, p, side, d = rng.choice(r.short), rng.choice(r.long), "long", "short->long"
            else:
                q, p, side, d = rng.choice(r.long), rng.choice(r.short), "short", "long->short"
        elif len(r.short) >= 2 or len(r.long) >= 2:
            pool, side = (r.short, "short") if len(r.short) >= 2 else (r.long, "long")
            q, p = rng.sample(pool, 2)
            d = f"{side}->{side}"
        else:
            continue
        group = by_group.get(r.group, []) if r.group is not None else []
        cands = [j for j in group if j != i] or None
        for _ in range(8):  # re-draw if the other image happens to share the caption text
            if cands:
                j = rng.choice(cands)
            else:  # uniform over the other images
                j = rng.randrange(len(records) - 1)
                j += j >= i
            o = records[j]
            pool = (o.long if side == "long" else o.short) or (o.short + o.long)
            if pool:
                n = rng.choice(pool)
                if n not in (p, q):
                    break
        else:
            continue
        out.append(CaptionTriple(q, p, n, d, r.key, o.key, cfg.instruction))
    return out


class CaptionPairDataset(Dataset):
    """Map-style dataset of triples; `set_epoch(e)` redraws directions and negatives."""

    def __init__(self, records: list[CaptionRecord], cfg: PairConfig):
        self.records, self.cfg = records, cfg
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.triples = make_triples(self.records, self.cfg, epoch)

    def __len__(self) -> int:
        return len(self.triples)

    def __getitem__(self, i: int) -> CaptionTriple:
        return self.triples[i]
