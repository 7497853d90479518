"""Energon-prepared datasets and metadatasets as shard sources (read from their YAML; no energon import).

The published layout (megatron-energon docs, "Dataset Format on Disk" and "Metadataset"):
  DIR/.nv-meta/dataset.yaml  `sample_type: {__module__: megatron.energon, __class__: CaptioningSample}`
                             and `field_map: {image: jpg, caption: txt}` (field -> tar member);
  DIR/.nv-meta/split.yaml    `split_parts: {train: [shards/a.tar, ...], val: [...]}` (paths relative to
                             DIR) and `exclude: [shards/b.tar, shards/a.tar/000032]` (a whole shard, or
                             one sample `SHARD/KEY`);
  DIR/.nv-meta/.info.yaml, DIR/**/*.tar.idx: energon's own statistics and indexes (not needed here).
  META.yaml                  `__module__: megatron.energon`, `__class__: MetadatasetV2`,
                             `splits: {train: {blend: [{weight: 5, path: ./coco}, ...]}}`, or one
                             `path:`; relative paths are relative to META.yaml; `split_part` picks
                             another split of a dataset; a path may name another metadataset.
A spec is `DIR` or `META.yaml`, optionally `#SPLIT` (default `train`). Blend weights are sample
shares (energon's rule) and nest multiplicatively. What we cannot honour exactly is refused by name
(`EnergonUnsupported`, one line): `join`, `blend_epochized`, `subset`, non-empty `subflavors`, crude
datasets, custom `sample_loader`s, sample types other than CaptioningSample, unknown keys.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml
from braceexpand import braceexpand

from .errors import DataSourceError, data_field
from .tario import IMAGE_EXTS

DEFAULT_SPLIT = "train"
SAMPLE_TYPES = ("CaptioningSample",)
"""energon sample types we map: CaptioningSample's `image` and `caption` fields."""


class EnergonUnsupported(DataSourceError):
    """An energon construct we do not map; the message names it and says what to do instead."""


@dataclass(frozen=True)
class EnergonPart:
    """One energon dataset split resolved to shards: what `data.spec.Source` needs."""

    spec: str
    urls: tuple[str, ...]
    weight: float
    """Expected share of samples within the spec (blend weights normalised and multiplied; sums to 1)."""
    exclude: dict[str, frozenset[str]] = field(default_factory=dict)
    """Shard url -> sample keys to leave out."""
    rename: dict[str, str | None] = field(default_factory=dict)
    """Tar member extension -> what our reader expects (`jpg`/`png`/`webp` image, `txt` caption)."""


def split_spec(spec: str) -> tuple[str, str] | None:
    """`DIR[#split]` or `META.yaml[#split]` -> (path, split); None when `spec` is not an energon spec."""
    path, _, split = spec.partition("#")
    if os.path.isdir(os.path.join(path, ".nv-meta")) or (path.endswith((".yaml", ".yml")) and os.path.isfile(path)):
        return path, split or DEFAULT_SPLIT
    return None


def _load(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            obj = yaml.safe_load(f)
    except OSError as e:
        raise DataSourceError(f"{what} {path!r} is unreadable ({e.strerror}); run `energon prepare` on the dataset") from None
    except yaml.YAMLError as e:
        raise DataSourceError(f"{what} {path!r} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise DataSourceError(f"{what} {path!r} is not a YAML mapping")
    return obj


def _refuse(where: str, construct: str, fix: str) -> EnergonUnsupported:
    return EnergonUnsupported(f"{where}: {construct} is not supported by llm2clip_nemo; {fix}")


def member_renames(field_map: dict, where: str) -> dict[str, str | None]:
    """CaptioningSample field map -> member renames: image member -> its image extension (`jpg`
    when the name carries none), caption member -> `txt`; other image and `txt` members dropped so
    the mapped ones are the only candidates."""
    if not isinstance(field_map, dict) or set(field_map) != {"image", "caption"}:
        raise _refuse(where, f"field_map {field_map!r}", "map exactly CaptioningSample's fields, e.g. {image: jpg, caption: txt}")
    for k, v in field_map.items():
        if not isinstance(v, str) or not v:
            raise _refuse(where, f"field_map.{k}={v!r}", "name one tar member extension per field, e.g. jpg or txt")
    img, cap = field_map["image"].lower(), field_map["caption"].lower()
    base = img.rsplit(".", 1)[-1]
    ren: dict[str, str | None] = {e: None for e in (*IMAGE_EXTS, "txt")}
    ren[img] = base if base in IMAGE_EXTS else "jpg"  # the decoder reads the bytes, not the name
    ren[cap] = "txt"
    return ren


def _dataset(root: str, split: str, dataset_config: str = "dataset.yaml", split_config: str = "split.yaml"
             ) -> tuple[list[str], dict[str, frozenset[str]], dict[str, str | None]]:
    meta = os.path.join(root, ".nv-meta")
    dpath = os.path.join(meta, dataset_config)
    ds = _load(dpath, "energon dataset.yaml")
    if "__class__" in ds:
        raise _refuse(dpath, f"__class__: {ds['__class__']} (a crude or custom dataset)",
                      "prepare it with a CaptioningSample field map, or build our shards with `llm2clip-nemo data build`")
    for k in ds:
        if k not in ("sample_type", "field_map", "subflavors"):
            raise _refuse(dpath, f"key {k!r}", "use a plain field_map (image, caption)")
    if ds.get("subflavors"):
        raise _refuse(dpath, "subflavors", "remove them: we do not tag samples by subflavor")
    st = ds.get("sample_type") or {}
    cls = st.get("__class__") if isinstance(st, dict) else st
    if not isinstance(st, dict) or st.get("__module__") != "megatron.energon" or cls not in SAMPLE_TYPES:
        raise _refuse(dpath, f"sample_type {cls!r}", f"use one of {list(SAMPLE_TYPES)} (image + caption)")
    rename = member_renames(ds.get("field_map"), dpath)
    spath = os.path.join(meta, split_config)
    sp = _load(spath, "energon split.yaml")
    parts = sp.get("split_parts") or {}
    if split not in parts:
        raise DataSourceError(f"{spath!r} has no split {split!r}; choose one of {sorted(parts)} with '{root}#SPLIT'")
    shards, samples = set(), {}
    for e in sp.get("exclude") or []:
        shard, sep, key = str(e).partition(".tar/")
        if sep:
            samples.setdefault(os.path.join(root, shard + ".tar"), set()).add(key)
        else:
            shards.add(os.path.join(root, str(e)))
    urls = [os.path.join(root, u) for p in parts[split] or [] for u in braceexpand(str(p))]
    urls = [u for u in urls if u not in shards]
    if not urls:
        raise DataSourceError(f"{spath!r}: split {split!r} lists no shards (after excludes)")
    return urls, {u: frozenset(k) for u, k in samples.items() if u in urls}, rename


_ENTRY_KEYS = ("path", "weight", "split_part", "subflavors", "dataset_config", "split_config")
_REFUSED = {
    "join": "joining datasets sample by sample has no equivalent here: write shards holding the joined members "
            "(`llm2clip-nemo data build`)",
    "blend_epochized": "use blend with weights (sample shares) instead",
    "subset": "list the wanted shards in the dataset's split.yaml instead",
    "shuffle_over_epochs_multiplier": "remove it (shard order is {shard_shuffle} and {seed})",
}


def _node(node, base: str, split: str, where: str, weight: float, seen: tuple[str, ...],
          named: Callable[[str], str]) -> list[EnergonPart]:
    if not isinstance(node, dict):
        raise DataSourceError(f"{where}: expected a mapping with 'path' or 'blend', got {node!r}")
    for k in node:
        if k in _REFUSED:
            raise _refuse(where, f"{k!r}", _REFUSED[k].format(shard_shuffle=named("shard_shuffle"), seed=named("seed")))
        if k not in (*_ENTRY_KEYS, "blend"):
            raise _refuse(where, f"key {k!r}", "use path/blend/weight/split_part only")
    if node.get("subflavors"):
        raise _refuse(where, "subflavors", "remove them: we do not tag samples by subflavor")
    if "blend" in node:
        entries = node["blend"] or []
        ws = [e.get("weight", 1.0) if isinstance(e, dict) else 1.0 for e in entries]
        if not entries or any(not isinstance(w, (int, float)) or w < 0 for w in ws) or sum(ws) <= 0:
            raise DataSourceError(f"{where}.blend needs entries with weights >= 0, not all 0 (got {ws})")
        out = []
        for i, (e, w) in enumerate(zip(entries, ws)):
            if w > 0:
                out += _node(e, base, split, f"{where}.blend[{i}]", weight * w / sum(ws), seen, named)
        return out
    if "path" not in node:
        raise DataSourceError(f"{where}: give 'path' or 'blend'")
    path = os.path.normpath(os.path.join(base, str(node["path"])))
    part = str(node.get("split_part", split))
    if os.path.isfile(path) and path.endswith((".yaml", ".yml")):
        return _metadataset(path, part, weight, seen, named)
    if not os.path.isdir(os.path.join(path, ".nv-meta")):
        raise DataSourceError(f"{where}: path {path!r} is neither an energon dataset (no .nv-meta/) nor a metadataset .yaml")
    urls, excl, ren = _dataset(path, part, node.get("dataset_config", "dataset.yaml"),
                               node.get("split_config", "split.yaml"))
    return [EnergonPart(spec=f"{path}#{part}", urls=tuple(urls), weight=weight, exclude=excl, rename=ren)]


def _metadataset(path: str, split: str, weight: float, seen: tuple[str, ...],
                 named: Callable[[str], str]) -> list[EnergonPart]:
    if path in seen:
        raise DataSourceError(f"metadataset {path!r} includes itself (via {' -> '.join(seen)})")
    md = _load(path, "energon metadataset")
    if md.get("__module__") != "megatron.energon" or md.get("__class__") != "MetadatasetV2":
        raise _refuse(path, f"__module__/__class__ {md.get('__module__')!r}/{md.get('__class__')!r}",
                      "write a MetadatasetV2 (__module__: megatron.energon, __class__: MetadatasetV2)")
    for k in md:
        if k not in ("__module__", "__class__", "splits"):
            raise _refuse(path, f"key {k!r}", "keep only __module__, __class__ and splits")
    splits = md.get("splits") or {}
    if split not in splits:
        raise DataSourceError(f"metadataset {path!r} has no split {split!r}; choose one of {sorted(splits)} with '{path}#SPLIT'")
    return _node(splits[split], os.path.dirname(path), split, f"{path}: splits.{split}", weight, (*seen, path), named)


def expand_energon(path: str, split: str, named: Callable[[str], str] = data_field) -> list[EnergonPart]:
    """An energon dataset dir or metadataset file, one split -> its parts (weights sum to 1).

    Raises DataSourceError (missing split, unreadable YAML) or EnergonUnsupported (a construct we do
    not map), each one line naming the file, the construct and the fix (a stream field by `named`,
    as `spec.parse_sources`)."""
    if os.path.isdir(path):
        urls, excl, ren = _dataset(path, split)
        return [EnergonPart(spec=f"{path}#{split}", urls=tuple(urls), weight=1.0, exclude=excl, rename=ren)]
    return _metadataset(os.path.normpath(path), split, 1.0, (), named)
