"""Shard writer: LAION-layout tars from an image folder + captions, or from img2dataset output.

Each sample is `{key}.{jpg|png|webp}`, `{key}.txt` (alt text / short caption) and `{key}.json`
(more captions, e.g. {"long": ..., "short_list": [...]}, plus provenance). Shards are
`{prefix}-{i:06d}.tar` with `manifest.json` (our format) and `sizes.json` (open_clip's).
Deterministic (fixed member metadata, input order preserved), atomic per shard (written to
`.tmp`, then renamed), resumable: completed shards are kept after checking they hold the same
keys the input would put there, so a killed build continues where it stopped.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .spec import DataSourceError
from .tario import IMAGE_EXTS, add_member, atomic_tar, commit_tar, iter_tar_samples

log = logging.getLogger("llm2clip_nemo.data")
MANIFEST_FORMAT = "llm2clip-shards/1"


@dataclass
class ShardSample:
    """One sample to write. `image` may be a zero-argument callable so resumed shards skip the read."""

    key: str
    image: bytes | Callable[[], bytes]
    image_ext: str
    txt: str | None = None
    meta: dict | None = None


def _chunks(it: Iterable[ShardSample], n: int) -> Iterator[list[ShardSample]]:
    buf: list[ShardSample] = []
    for s in it:
        buf.append(s)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def _existing_keys(path: str) -> list[str]:
    return [s.key for s in iter_tar_samples(path, keys_only=True) if s.error is None]


def write_shards(samples: Iterable[ShardSample], out_dir: str, prefix: str = "shard",
                 samples_per_shard: int = 1000) -> dict:
    """Write `samples` as shards under `out_dir`; returns the manifest (also saved as manifest.json)."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard={samples_per_shard} must be >= 1")
    os.makedirs(out_dir, exist_ok=True)
    entries, fields, resumed, seen = [], {"txt"}, 0, set()
    for i, chunk in enumerate(_chunks(samples, samples_per_shard)):
        name = f"{prefix}-{i:06d}.tar"
        path = os.path.join(out_dir, name)
        keys = [s.key for s in chunk]
        for s in chunk:
            if s.key in seen:
                raise DataSourceError(f"sample key {s.key!r} occurs twice in the input; keys must be unique")
            seen.add(s.key)
            if s.meta:
                fields.update(s.meta)
        if os.path.exists(path):
            have = _existing_keys(path)
            if have != keys:
                raise DataSourceError(
                    f"{path} exists but holds other samples than this input puts there ({len(have)} samples, first "
                    f"keys {have[:2]}, vs {len(keys)}, first keys {keys[:2]}): it is from another build; write to an "
                    "empty --out directory or delete it"
                )
            resumed += 1
        else:
            tmp, tf = atomic_tar(path)
            try:
                for s in chunk:
                    ext = s.image_ext.lower().lstrip(".").replace("jpeg", "jpg")
                    if ext not in IMAGE_EXTS:
                        raise DataSourceError(f"sample {s.key!r}: image extension {s.image_ext!r} is not one of {IMAGE_EXTS}")
                    add_member(tf, f"{s.key}.{ext}", s.image() if callable(s.image) else s.image)
                    if s.txt is not None:
                        add_member(tf, f"{s.key}.txt", s.txt.encode("utf-8"))
                    if s.meta is not None:
                        add_member(tf, f"{s.key}.json", json.dumps(s.meta, sort_keys=True, ensure_ascii=False).encode())
            except BaseException:
                tf.close()
                os.remove(tmp)
                raise
            commit_tar(tmp, tf, path)
        entries.append({"name": name, "count": len(chunk), "first_key": keys[0], "last_key": keys[-1]})
    if not entries:
        raise DataSourceError(f"no samples to write into {out_dir}: the input is empty")
    manifest = {"format": MANIFEST_FORMAT, "samples_per_shard": samples_per_shard, "total": sum(e["count"] for e in entries),
                "fields": sorted(fields), "shards": entries}
    _write_json(os.path.join(out_dir, "manifest.json"), manifest)
    _write_json(os.path.join(out_dir, "sizes.json"), {e["name"]: e["count"] for e in entries})
    return {**manifest, "resumed_shards": resumed}


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, ensure_ascii=False)
    os.replace(tmp, path)


def _read_file(path: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()
    return read


_IMAGE_COLS = ("image", "file", "path", "filename")
_CAPTION_COLS = ("caption", "txt", "text")


def _caption_rows(captions_file: str) -> Iterator[tuple[int, dict]]:
    if captions_file.endswith((".jsonl", ".json")):
        with open(captions_file, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except ValueError as e:
                        raise DataSourceError(f"{captions_file}:{n} is not valid JSON ({e}); one object per line") from None
    elif captions_file.endswith((".csv", ".tsv")):
        with open(captions_file, encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.DictReader(f, delimiter="\t" if captions_file.endswith(".tsv") else ","), 2):
                yield n, row
    else:
        raise DataSourceError(f"captions file {captions_file!r}: use .jsonl (one object per line) or .csv/.tsv with a header")


def samples_from_folder(images_dir: str, captions_file: str, skipped: dict | None = None) -> Iterator[ShardSample]:
    """Rows of {"image": relative path, "caption": alt text, other fields -> json} in file order.

    Keys are the row index, zero-padded (`000000042`), like img2dataset's. Rows whose image is missing
    are skipped and counted in `skipped["missing_image"]`."""
    skipped = skipped if skipped is not None else {}
    for i, (n, row) in enumerate(_caption_rows(captions_file)):
        img_col = next((c for c in _IMAGE_COLS if row.get(c)), None)
        if img_col is None:
            raise DataSourceError(f"{captions_file}:{n} has no image column; name it one of {_IMAGE_COLS}")
        rel = row[img_col]
        path = os.path.join(images_dir, rel)
        ext = os.path.splitext(rel)[1].lower().lstrip(".")
        if not os.path.isfile(path) or ext not in IMAGE_EXTS:
            skipped["missing_image"] = skipped.get("missing_image", 0) + 1
            if skipped["missing_image"] <= 3:
                log.warning("data build: %s:%d image %r missing or not jpg/png/webp under %s; skipped", captions_file, n, rel, images_dir)
            continue
        cap_col = next((c for c in _CAPTION_COLS if c in row), None)
        meta = {k: _maybe_list(v) for k, v in row.items() if k not in (img_col, cap_col) and v not in (None, "")}
        meta["source_path"] = rel
        yield ShardSample(key=f"{i:09d}", image=_read_file(path), image_ext=ext,
                          txt=row.get(cap_col) if cap_col else None, meta=meta)


def _maybe_list(v):
    """CSV cells holding a JSON list (e.g. short_list) become lists; other strings stay strings."""
    if isinstance(v, str) and v.startswith("[") and v.endswith("]"):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def samples_from_img2dataset(src_dir: str, skipped: dict | None = None) -> Iterator[ShardSample]:
    """img2dataset output: `files` layout (`00000/000000012.jpg` + `.txt` + `.json`) or its tars.

    Samples whose json says status != "success" are skipped and counted."""
    skipped = skipped if skipped is not None else {}
    tars, files = [], []
    for root, dirs, names in os.walk(src_dir):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(root, n)
            if n.endswith(".tar") and not n.endswith(".emb.tar"):
                tars.append(p)
            elif os.path.splitext(n)[1].lower().lstrip(".") in IMAGE_EXTS:
                files.append(p)
    if not tars and not files:
        raise DataSourceError(f"{src_dir} holds no img2dataset output (no .tar shards, no image files)")

    def ok(meta: dict | None) -> bool:
        if meta and meta.get("status", "success") != "success":
            skipped["failed_download"] = skipped.get("failed_download", 0) + 1
            return False
        return True

    for t in tars:
        for s in iter_tar_samples(t):
            if s.error:
                skipped[s.error.split(":")[0]] = skipped.get(s.error.split(":")[0], 0) + 1
                continue
            ext = next((e for e in IMAGE_EXTS if e in s.members), None)
            meta = json.loads(s.members["json"]) if "json" in s.members else None
            if ext is None or not ok(meta):
                continue
            txt = s.members["txt"].decode("utf-8") if "txt" in s.members else None
            yield ShardSample(key=os.path.basename(s.key), image=s.members[ext], image_ext=ext, txt=txt, meta=meta)
    for p in files:
        stem, ext = os.path.splitext(p)
        meta = None
        if os.path.exists(stem + ".json"):
            with open(stem + ".json", encoding="utf-8") as f:
                meta = json.load(f)
        if not ok(meta):
            continue
        txt = None
        if os.path.exists(stem + ".txt"):
            with open(stem + ".txt", encoding="utf-8") as f:
                txt = f.read()
        yield ShardSample(key=os.path.basename(stem), image=_read_file(p), image_ext=ext.lstrip("."), txt=txt, meta=meta)
