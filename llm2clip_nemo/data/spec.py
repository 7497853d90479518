"""Shard specs: `a::b` sources, brace expansion, directories, manifests, energon datasets; mixing.

Two mixing rules, one per run:
  upsampling_factors (open_clip's): a factor scales every shard of its source, so a source's share
      of samples is proportional to (its samples x factor), i.e. to shard count x factor when
      shards are equally full;
  weights (energon's blend rule): the expected share of samples, whatever the shard sizes; the
      stream picks the source of each sample by weight (see `data.stream`).
An energon dataset dir or metadataset `.yaml` (`data.energon`) may expand into several Sources
(a blend); its blend weights split its part's weight, so it mixes by weights.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from braceexpand import braceexpand

from .energon import expand_energon, split_spec
from .errors import DataSourceError, data_field
from .tario import RawSample, is_local, iter_tar_samples

__all__ = ["DataSourceError", "Source", "parse_sources", "mixing_weights"]


@dataclass(frozen=True)
class Source:
    """One source of shards: a `::`-separated part of a spec, or one dataset of an energon blend."""

    spec: str
    urls: tuple[str, ...]
    factor: float = 1.0
    """upsampling factor (open_clip rule); 1.0 in weights mode."""
    weight: float | None = None
    """Expected share of samples (weights rule, normalised over sources); None in factor mode."""
    exclude: dict[str, frozenset[str]] = field(default_factory=dict)
    """Shard url -> sample keys left out (energon split.yaml `exclude`)."""
    rename: dict[str, str | None] | None = None
    """Member renames from an energon field map (None: members read as named)."""

    def read(self, url: str, start: int = 0) -> Iterator[RawSample]:
        """The samples of one of this source's shards from item `start` on: every reader calls this,
        so excluded samples and field maps apply everywhere (`tario.iter_tar_samples`)."""
        return iter_tar_samples(url, start=start, exclude=self.exclude.get(url, frozenset()), rename=self.rename)


def _expand_one(spec: str) -> list[str]:
    spec = spec.strip()
    if is_local(spec) and os.path.isdir(spec):
        urls = sorted(
            os.path.join(spec, n) for n in os.listdir(spec) if n.endswith(".tar") and not n.endswith(".emb.tar")
        )
        if not urls:
            raise DataSourceError(f"directory {spec!r} holds no .tar shards; build some with `llm2clip-nemo data build`")
        return urls
    if spec.endswith(".json") and is_local(spec) and os.path.isfile(spec):
        with open(spec) as f:
            man = json.load(f)
        base = os.path.dirname(spec)
        return [os.path.join(base, s["name"]) for s in man["shards"]]
    return list(braceexpand(spec))


def _numbers(name: str, value: str | None, n: int, named: Callable[[str], str]) -> list[float] | None:
    if value is None or str(value).strip() == "":
        return None
    fs = str(value).split("::")
    if len(fs) != n:
        raise DataSourceError(
            f"{named(name)}={value!r} has {len(fs)} values for {n} sources in {named('urls')}; give one per source, "
            f"e.g. {'::'.join(['1'] * n)!r}"
        )
    try:
        xs = [float(x) for x in fs]
    except ValueError:
        raise DataSourceError(f"{named(name)}={value!r} is not numbers separated by '::'") from None
    if any(x < 0 for x in xs) or sum(xs) <= 0:
        raise DataSourceError(f"{named(name)}={value!r}: values must be >= 0 and not all 0")
    return xs


def parse_sources(urls: str, upsampling_factors: str | None = None, check_paths: bool = True,
                  weights: str | None = None, blend: bool = True,
                  named: Callable[[str], str] = data_field) -> list[Source]:
    """`"a/{000..009}.tar::b/{00..03}.tar"` with factors `"1::2"` (or weights `"1::3"`) -> Sources.

    A part is a brace pattern, a directory of .tar, a manifest.json, or an energon dataset dir /
    metadataset .yaml with an optional `#split` (`data.energon`). Mixing rules: see the module doc.
    Weights mode is chosen by `weights`, or by a part that is an energon blend of several datasets
    (each part then weighs 1); every Source then carries `weight` (shares summing to 1).
    blend=False concatenates instead (energon's val mode): weights ignored, factor mode with 1s.
    named: a field's name as the user types it, for the messages: the stream passes
    `config.paths.field_path(cfg, name)` ('model.train_ds.urls'), a verb taking the spec as a flag
    names the flag ('--data').
    Raises DataSourceError (one line, naming the value and the fix)."""
    parts = [p.strip() for p in urls.split("::")]
    if not urls.strip() or any(not p for p in parts):
        raise DataSourceError(f"{named('urls')}={urls!r} has an empty source; use e.g. 'dir/shard-{{000000..000009}}.tar::other/'")
    factors = _numbers("upsampling_factors", upsampling_factors, len(parts), named)
    part_w = _numbers("weights", weights, len(parts), named)
    if factors is not None and part_w is not None:
        raise DataSourceError(f"{named('upsampling_factors')} and {named('weights')} are both set; choose one mixing rule (see README)")
    expanded = []
    for p in parts:
        es = split_spec(p)
        expanded.append([(s.spec, s.urls, s.weight, s.exclude, s.rename) for s in expand_energon(*es, named)]
                        if es else [(p, tuple(_expand_one(p)), 1.0, {}, None)])
    if not blend:
        part_w = None
    blend = blend and any(len(e) > 1 for e in expanded)
    if blend and factors is not None:
        raise DataSourceError(
            f"{named('urls')}={urls!r} holds an energon blend (weights are sample shares) but "
            f"{named('upsampling_factors')} is set; give {named('weights')} instead (one per '::' part)"
        )
    if blend and part_w is None:
        part_w = [1.0] * len(parts)
    sources = []
    for i, (p, es) in enumerate(zip(parts, expanded)):
        for spec, us, inner, excl, ren in es:
            if check_paths:
                _check_readable(us, p, named('urls'))
            sources.append(Source(spec=spec, urls=us, factor=1.0 if factors is None else factors[i],
                                  weight=None if part_w is None else part_w[i] / sum(part_w) * inner,
                                  exclude=excl, rename=ren))
    return sources


def _check_readable(urls: tuple[str, ...], part: str, urls_field: str) -> None:
    for u in urls:
        if is_local(u) and not os.access(u.removeprefix("file://"), os.R_OK):
            raise DataSourceError(
                f"shard {u!r} (from source {part!r}) does not exist or is not readable; check the "
                f"path and brace range in {urls_field}, or list what is there with `llm2clip-nemo data inspect`"
            )


def mixing_weights(sources: list[Source]) -> list[float] | None:
    """Per-source sample shares in weights mode, None in factor mode."""
    return None if sources[0].weight is None else [s.weight for s in sources]
