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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from .samples import check_sample, decode_json
from .spec import DataSourceError
from .tario import IMAGE_EXTS, RawSample, add_member, atomic_tar, commit_tar, iter_tar_samples

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


def safe_key(key: str) -> str:
    """A key webdataset readers keep whole: they split a member name at the first dot of its
    basename, so `.` becomes `%2E` (and `%` becomes `%25`, which keeps the mapping one-to-one)."""
    return key.replace("%", "%25").replace(".", "%2E")


def _existing_keys(path: str) -> list[str]:
    return [s.key for s in iter_tar_samples(path, keys_only=True) if s.error is None]


def write_shards(samples: Iterable[ShardSample], out_dir: str, prefix: str = "shard",
                 samples_per_shard: int = 1000) -> dict:
    """Write `samples` as shards under `out_dir`; returns the manifest (also saved as manifest.json).

    Keys a webdataset reader would split (a `.` in them) are written as `safe_key(key)`; the
    manifest's `key_map` maps each such written key back to the input's."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard={samples_per_shard} must be >= 1")
    os.makedirs(out_dir, exist_ok=True)
    entries, fields, resumed, seen, key_map = [], {"txt"}, 0, set(), {}
    for i, chunk in enumerate(_chunks(samples, samples_per_shard)):
        name = f"{prefix}-{i:06d}.tar"
        path = os.path.join(out_dir, name)
        keys = [safe_key(s.key) for s in chunk]
        for s, k in zip(chunk, keys):
            if s.key in seen:
                raise DataSourceError(f"sample key {s.key!r} occurs twice in the input; keys must be unique")
            seen.add(s.key)
            if k != s.key:
                key_map[k] = s.key
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
                for s, key in zip(chunk, keys):
                    ext = s.image_ext.lower().lstrip(".").replace("jpeg", "jpg")
                    if ext not in IMAGE_EXTS:
                        raise DataSourceError(f"sample {s.key!r}: image extension {s.image_ext!r} is not one of {IMAGE_EXTS}")
                    add_member(tf, f"{key}.{ext}", s.image() if callable(s.image) else s.image)
                    if s.txt is not None:
                        add_member(tf, f"{key}.txt", s.txt.encode("utf-8"))
                    if s.meta is not None:
                        add_member(tf, f"{key}.json", json.dumps(s.meta, sort_keys=True, ensure_ascii=False).encode())
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
    if key_map:
        manifest["key_map"] = dict(sorted(key_map.items()))
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


class _Skips:
    """Counts of samples and parts left out, by reason; the first few of each reason logged with their place."""

    def __init__(self, counts: dict):
        self.counts = counts

    def add(self, reasons, where: str) -> None:
        for r in reasons:
            n = self.counts[r] = self.counts.get(r, 0) + 1
            if n <= 3:
                log.warning("data build: %s: %s%s", where, r, "; further ones only counted" if n == 3 else "")


_BAD_ROW = object()  # a row that is not JSON or not UTF-8: skipped and counted as bad_row


def _caption_rows(captions_file: str) -> Iterator[tuple[int, object]]:
    """(line number, row) in file order; a row that cannot be read is `(n, _BAD_ROW)`."""
    if captions_file.endswith((".jsonl", ".json")):
        with open(captions_file, "rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line.decode("utf-8"))
                    except ValueError:  # JSONDecodeError and UnicodeDecodeError
                        yield n, _BAD_ROW
    elif captions_file.endswith((".csv", ".tsv")):
        # surrogateescape: a non-UTF-8 cell is found per row (bad_row) instead of failing the file
        with open(captions_file, encoding="utf-8", errors="surrogateescape", newline="") as f:
            for n, row in enumerate(csv.DictReader(f, delimiter="\t" if captions_file.endswith(".tsv") else ","), 2):
                yield n, row if _utf8(row) else _BAD_ROW
    else:
        raise DataSourceError(f"captions file {captions_file!r}: use .jsonl (one object per line) or .csv/.tsv with a header")


def _utf8(row: dict) -> bool:
    try:
        for k, v in row.items():
            for x in (k, *(v if isinstance(v, list) else [v])):
                if isinstance(x, str):
                    x.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _checked(raw: RawSample, caption_fields, skips: _Skips, where: str) -> ShardSample | None:
    """The one sample checker (image decoded); the written sample keeps what passed (bad members dropped).

    img2dataset marks samples it failed to fetch with json status != "success": `failed_download`."""
    meta, _ = decode_json(raw.members.get("json"))
    if raw.error is None and meta and meta.get("status", "success") != "success":
        skips.add(["failed_download"], where)
        return None
    c = check_sample(raw, caption_fields, decode=True)
    skips.add(c.reasons, where)
    s = c.sample
    if s is None:
        return None
    return ShardSample(key=s.key, image=s.image, image_ext=s.image_ext, txt=s.txt, meta=s.meta)


def samples_from_folder(images_dir: str, captions_file: str, skipped: dict | None = None,
                        caption_fields: Sequence[str] | None = ("txt",)) -> Iterator[ShardSample]:
    """Rows of {"image": relative path, "caption": alt text, other fields -> json} in file order.

    Keys are the row index, zero-padded (`000000042`), like img2dataset's. Every sample goes through
    `data.samples.check_sample` (image decoded; no caption in `caption_fields` = `missing_caption`);
    a row that is not valid JSON, not UTF-8 or not an object is `bad_row`, a caption that is not a
    string `bad_caption` (dropped); each is skipped and counted in `skipped` by reason."""
    skips = _Skips(skipped if skipped is not None else {})
    for i, (n, row) in enumerate(_caption_rows(captions_file)):
        where = f"{captions_file}:{n}"
        if row is _BAD_ROW or not isinstance(row, dict):
            what = "not valid UTF-8 JSON / CSV" if row is _BAD_ROW else f"a JSON {type(row).__name__}, not an object"
            skips.add(["bad_row"], f"{where} is {what}")
            continue
        img_col = next((c for c in _IMAGE_COLS if isinstance(row.get(c), str) and row[c]), None)
        if img_col is None:
            raise DataSourceError(f"{where} has no image column; name it one of {_IMAGE_COLS}")
        rel = row[img_col]
        path = os.path.join(images_dir, rel)
        ext = os.path.splitext(rel)[1].lower().lstrip(".")
        members: dict[str, bytes] = {}
        if os.path.isfile(path) and ext in IMAGE_EXTS:
            members[ext] = _read_file(path)()
        cap_col = next((c for c in _CAPTION_COLS if c in row), None)
        cap = row.get(cap_col) if cap_col else None
        if cap is not None and not isinstance(cap, str):
            skips.add(["bad_caption"], f"{where} caption {cap!r:.40} is not a string")
            cap = None
        if cap is not None:
            members["txt"] = cap.encode("utf-8")
        meta = {k: _maybe_list(v) for k, v in row.items() if k not in (img_col, cap_col) and v not in (None, "")}
        meta["source_path"] = rel
        members["json"] = json.dumps(meta, ensure_ascii=False).encode()
        s = _checked(RawSample(f"{i:09d}", captions_file, i, members), caption_fields, skips, f"{where} ({rel})")
        if s is not None:
            yield s


def _read_file(path: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()
    return read


def _maybe_list(v):
    """CSV cells holding a JSON list (e.g. short_list) become lists; other strings stay strings."""
    if isinstance(v, str) and v.startswith("[") and v.endswith("]"):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def samples_from_img2dataset(src_dir: str, skipped: dict | None = None,
                             caption_fields: Sequence[str] | None = ("txt",)) -> Iterator[ShardSample]:
    """img2dataset output: `files` layout (`00000/000000012.jpg` + `.txt` + `.json`) or its tars.

    Every sample goes through `data.samples.check_sample` (image decoded) and is skipped and counted
    in `skipped` by its reason; samples whose json says status != "success" as `failed_download`.
    In the files layout a key is the file name without its last extension (`photo.v1.jpg` ->
    `photo.v1`), written under `safe_key` by `write_shards`."""
    skips = _Skips(skipped if skipped is not None else {})
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

    for t in tars:
        for raw in iter_tar_samples(t):
            where = f"{t}:{raw.key or '#' + str(raw.index)}"
            s = _checked(raw, caption_fields, skips, where)
            if s is not None:
                s.key = os.path.basename(s.key)
                yield s
    for p in files:
        stem, ext = os.path.splitext(p)
        members = {ext.lstrip(".").lower(): _read_file(p)()}
        for m in ("txt", "json"):
            if os.path.exists(f"{stem}.{m}"):
                members[m] = _read_file(f"{stem}.{m}")()
        s = _checked(RawSample(os.path.basename(stem), src_dir, 0, members), caption_fields, skips, p)
        if s is not None:
            yield s
