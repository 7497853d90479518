"""Data -> eval set: every sample of webdataset shards once, in order, or an eval JSON manifest,
as an `EvalData` (an `EvalSet` plus long captions).

Shards are read through `data.spec.parse_sources` and checked by `data.samples.check_sample`, so a
sample is skipped for the same reason, under the same name, as in the training stream (energon
excludes and field maps apply too). Captions come from `txt` and/or json fields, a long caption from a
json field, labels from a json field. Manifests: `eval.manifest` (simple, Karpathy or COCO captions).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data.samples import check_sample
from ..data.spec import parse_sources
from .evalset import EvalSet
from .manifest import load_manifest


class EvalDataError(ValueError):
    """Evaluation data that cannot be used as given; the message names the source and the fix."""


@dataclass
class EvalData:
    """Images with retrieval captions, optional long captions and labels."""

    set: EvalSet
    """`EvalSet`: images (encoded bytes or file paths), retrieval captions, text_to_image, labels."""
    long_captions: list[str | None] = field(default_factory=list)
    """Per image: its long caption, or None (empty list: the data has none)."""
    caption_fields: tuple[str, ...] = ("txt",)
    """Where the retrieval captions came from."""

    @property
    def n_long(self) -> int:
        """Images with a long caption."""
        return sum(c is not None for c in self.long_captions)

    def summary(self) -> str:
        """One line: the set's counts, what was skipped by reason, and the long captions."""
        s = self.set.summary()
        return s + (f"; {self.n_long} long captions" if self.n_long else "")


def _is_shard_manifest(path: Path) -> bool:
    """True for a `data build` manifest.json (a dict with "shards"), read by `data.spec`, not here."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(obj, dict) and "shards" in obj


def load_shard_data(spec: str, caption_fields: Sequence[str] = ("txt",), long_field: str | None = "long",
                    labels_field: str | None = None, strict: bool = False, max_samples: int | None = None) -> EvalData:
    """Every sample of the shards in `spec` once, in order, images kept encoded.

    Samples go through `data.samples.check_sample` with the image decoded, so a sample is skipped
    for the same reason, under the same name, as in the training stream; a sample needs text in
    one of the caption fields, the long field or the labels field. strict: raise `EvalDataError`
    at the first problem, naming the shard and the sample key."""
    # every shard read through its Source, so energon excludes and field maps apply as in training
    # messages name the spec as `llm2clip-nemo evaluate --data` takes it (its only field: the urls)
    reads = [(u, src) for src in parse_sources(spec, named=lambda _: "--data") for u in src.urls]
    es = EvalSet(images=[], captions=[], text_to_image=[], keys=[], source=f"shards {spec}")
    fields = list(dict.fromkeys([*caption_fields, *(f for f in (long_field, labels_field) if f)]))
    longs, labels = [], []
    for url, src in reads:
        for raw in src.read(url):
            checked = check_sample(raw, fields, decode=True)
            key = raw.key or f"#{raw.index}"
            if strict and [r for r in checked.reasons if r != "excluded"]:  # excluded by the dataset: not a fault
                detail = f" ({checked.detail})" if checked.fatal else ""
                raise EvalDataError(f"{url}: sample {key}: {checked.reasons[0]}{detail}; fix the shard or run "
                                    "without --strict to skip and count such samples.")
            for r in checked.reasons:
                es.add_problem(r, f"{url}:{key}", fatal=r == checked.fatal)
            s = checked.sample
            if s is None:
                continue
            idx = len(es.images)
            es.images.append(s.image)
            es.keys.append(s.key)
            # one caption once per image: the demo's short_list repeats txt, and a duplicate would be
            # its own nearest neighbour (inflating CRA) and a free extra hit in retrieval
            caps = list(dict.fromkeys(c for f in caption_fields for c in s.captions(f)))
            es.captions.extend(caps)
            es.text_to_image.extend([idx] * len(caps))
            long = s.captions(long_field) if long_field else []
            longs.append(long[0] if long else None)
            label = s.meta.get(labels_field) if labels_field and s.meta else None
            if isinstance(label, list):
                label = label[0] if label else None
            labels.append(None if label is None else str(label))
            if max_samples and len(es.images) >= max_samples:
                break
        if max_samples and len(es.images) >= max_samples:
            break
    if not es.images:
        raise EvalDataError(f"no usable samples in {spec}: {es.summary()}")
    es.labels = labels if any(x is not None for x in labels) else []
    if labels_field and not es.labels:
        raise EvalDataError(f"--labels-field {labels_field!r}: no sample json of {spec} has that field.")
    return EvalData(es, longs if any(c is not None for c in longs) else [], tuple(caption_fields))


def load_eval_data(spec: str, caption_fields: Sequence[str] = ("txt",), long_field: str | None = "long",
                   labels_field: str | None = None, strict: bool = False, max_samples: int | None = None,
                   image_root: str | None = None, split: str | None = None) -> EvalData:
    """Shards (a brace pattern, directory or shard manifest.json) or an eval JSON manifest (a .json or
    .jsonl file without a "shards" key; `image_root` and `split` apply to it only).

    max_samples: keep the first N images (and their captions). Raises `EvalDataError` when nothing
    usable is left or the labels field is absent, `eval.manifest.ManifestError` for a bad manifest,
    `data.spec.DataSourceError` for a shard spec that names nothing."""
    p = Path(spec)
    if p.suffix in (".json", ".jsonl") and p.is_file() and not _is_shard_manifest(p):
        es = load_manifest(p, image_root=image_root, split=split, strict=strict)
        if max_samples and es.n_images > max_samples:
            keep = set(range(max_samples))
            es.images, es.keys = es.images[:max_samples], es.keys[:max_samples]
            es.labels = es.labels[:max_samples]
            pairs = [(c, i) for c, i in zip(es.captions, es.text_to_image) if i in keep]
            es.captions, es.text_to_image = [c for c, _ in pairs], [i for _, i in pairs]
        return EvalData(es, [], ("manifest",))
    return load_shard_data(spec, caption_fields, long_field, labels_field, strict, max_samples)
