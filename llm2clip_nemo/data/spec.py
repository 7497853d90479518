"""Shard specs: `a::b` sources, brace expansion, directories and manifests, upsampling factors."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from braceexpand import braceexpand

from .tario import is_local


class DataSourceError(RuntimeError):
    """A data source is unusable: the message names the path or source and the fix."""


@dataclass(frozen=True)
class Source:
    """One `::`-separated part of a shard spec."""

    spec: str
    urls: tuple[str, ...]
    factor: float


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


def parse_sources(urls: str, upsampling_factors: str | None = None, check_paths: bool = True) -> list[Source]:
    """`"a/{000..009}.tar::b/{00..03}.tar"` with factors `"1::2"` -> two Sources.

    As in open_clip, a factor scales every shard of its source: a source's share of samples is
    proportional to (number of shards x factor).
    """
    parts = [p for p in urls.split("::")]
    if not urls.strip() or any(not p.strip() for p in parts):
        raise DataSourceError(f"data.urls={urls!r} has an empty source; use e.g. 'dir/shard-{{000000..000009}}.tar::other/'")
    if upsampling_factors is None or str(upsampling_factors).strip() == "":
        factors = [1.0] * len(parts)
    else:
        fs = str(upsampling_factors).split("::")
        if len(fs) != len(parts):
            raise DataSourceError(
                f"data.upsampling_factors={upsampling_factors!r} has {len(fs)} values for {len(parts)} sources "
                f"in data.urls; give one factor per source, e.g. {'::'.join(['1'] * len(parts))!r}"
            )
        try:
            factors = [float(x) for x in fs]
        except ValueError:
            raise DataSourceError(f"data.upsampling_factors={upsampling_factors!r} is not numbers separated by '::'") from None
        if any(x < 0 for x in factors) or sum(factors) <= 0:
            raise DataSourceError(f"data.upsampling_factors={upsampling_factors!r}: factors must be >= 0 and not all 0")
    sources = []
    for p, fac in zip(parts, factors):
        expanded = _expand_one(p)
        if check_paths:
            for u in expanded:
                if is_local(u) and not os.access(u.removeprefix("file://"), os.R_OK):
                    raise DataSourceError(
                        f"shard {u!r} (from source {p.strip()!r}) does not exist or is not readable; check the "
                        f"path and brace range in data.urls, or list what is there with `llm2clip-nemo data inspect`"
                    )
        sources.append(Source(spec=p.strip(), urls=tuple(expanded), factor=fac))
    return sources
