"""The one sample reader and caption extractor: raw tar members -> a usable sample, or reasons.

`data build`, `data inspect`, the training stream, `extract`, `evaluate` and the caption-pair
reader all call `check_sample`, so a sample is valid or skipped for the same reason, under the same
name, at every stage. Checks run cheapest first and stop at the first fatal one:
  1. reader markers: `truncated_tar`, `unreadable_shard`, `excluded` (listed in an energon
     dataset's `split.yaml` exclude list; data never read) (fatal);
  2. members dropped, the sample kept: `pickle_member` (never unpickled), `bad_text` (the `.txt` is
     not UTF-8), `bad_json` (the `.json` is not JSON, or is not an object, e.g. a list);
  3. `missing_image`: no `jpg|jpeg|png|webp` member (fatal);
  4. `missing_caption`: none of the caption fields holds text (fatal);
  5. with `decode=True`, the image reasons of `data.images.IMAGE_REASONS` (fatal, by
     `data.images.check_image`); the training stream decodes in its transform instead and counts
     the same reasons.
Captions (`field_captions`): field `txt` is the alt-text member, any other name a key of the
sample's json; a string counts when it is not blank after stripping, a list contributes its
non-blank strings; null, numbers and nested objects are not captions.
"""
from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from .images import IMAGE_REASONS, ImageDecodeError, check_image, decode_image
from .tario import IMAGE_EXTS, RawSample

MEMBER_REASONS = ("pickle_member", "bad_text", "bad_json")
"""Member-level problems: the member is dropped and counted, the sample goes on."""
SAMPLE_REASONS = ("truncated_tar", "unreadable_shard", "excluded", "missing_image", "missing_caption", *IMAGE_REASONS)
"""Sample-level problems: the sample is skipped and counted."""


def field_captions(name: str, txt: str | None, meta: dict | None) -> list[str]:
    """The captions a sample holds in field `name` (stripped, non-blank strings; see module doc)."""
    v = txt if name == "txt" else (meta.get(name) if isinstance(meta, dict) else None)
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        return []
    return [c.strip() for c in v if isinstance(c, str) and c.strip()]


@dataclass
class Sample:
    """A sample that passed `check_sample`: its image still encoded, text and json decoded."""

    key: str
    url: str
    index: int
    image_ext: str | None
    """None only for a caption-only sample (`check_sample(..., require_image=False)`)."""
    image: bytes
    txt: str | None
    meta: dict | None
    members: dict[str, bytes] = field(default_factory=dict)

    def captions(self, name: str) -> list[str]:
        return field_captions(name, self.txt, self.meta)


@dataclass
class Checked:
    """`check_sample`'s answer: the sample or None, and every reason counted on the way."""

    sample: Sample | None
    reasons: list[str]
    """Member-level reasons first, then the fatal one (when `sample` is None)."""
    detail: str = ""
    """What the fatal reason found (for --strict messages and logs)."""

    @property
    def fatal(self) -> str | None:
        return None if self.sample is not None else self.reasons[-1]


def decode_text(data: bytes | None) -> tuple[str | None, bool]:
    """(text, ok): UTF-8 text of a `.txt` member, or (None, False) when it is not UTF-8."""
    if data is None:
        return None, True
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return None, False


def decode_json(data: bytes | None) -> tuple[dict | None, bool]:
    """(object, ok): a `.json` member as a dict, or (None, False) when it is not a JSON object."""
    if data is None:
        return None, True
    try:
        obj = json.loads(data)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None, False
    return (obj, True) if isinstance(obj, dict) else (None, False)


def check_sample(raw: RawSample, caption_fields: Sequence[str] | None, decode: bool = False,
                 require_image: bool = True) -> Checked:
    """Run the checks of the module docstring on one raw sample.

    caption_fields: the fields a caption may come from; None skips check 4 (e.g. `data inspect`
    without --caption-fields still counts every other reason). decode: also decode the image
    with `decode_image` (check 5). require_image=False skips check 3 for readers of captions only
    (stage 1's caption pairs may come from caption-only tars)."""
    reasons = list(raw.skipped)
    if raw.error is not None:
        reason, _, detail = raw.error.partition(":")
        return Checked(None, [*reasons, reason], detail.strip() or raw.error)
    m = raw.members
    txt, ok = decode_text(m.get("txt"))
    if not ok:
        reasons.append("bad_text")
    meta, ok = decode_json(m.get("json"))
    if not ok:
        reasons.append("bad_json")
    ext = next((e for e in IMAGE_EXTS if e in m), None)
    if ext is None and require_image:
        return Checked(None, [*reasons, "missing_image"], f"members {sorted(m)} hold no {'/'.join(IMAGE_EXTS)} image")
    if caption_fields is not None and not any(field_captions(f, txt, meta) for f in caption_fields):
        return Checked(None, [*reasons, "missing_caption"], f"no text in caption fields {list(caption_fields)}")
    if decode and ext is not None:
        try:
            check_image(m[ext])
        except ImageDecodeError as e:
            return Checked(None, [*reasons, e.reason], e.detail)
    return Checked(Sample(raw.key, raw.url, raw.index, ext, m[ext] if ext else b"", txt, meta, m), reasons)


class ReasonCounter(dict):
    """reason -> count, kept sorted by name when read out (`as_dict`)."""

    def add(self, reasons: Sequence[str]) -> None:
        for r in reasons:
            self[r] = self.get(r, 0) + 1

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.items()))


def decode_member(ext: str, data: bytes):
    """The decode whitelist for loose members: images (via `decode_image`), text, json, npy, cls; pickles never.

    Returns None for anything not whitelisted (the caller counts it); ImageDecodeError (with .reason)
    for an unusable image, ValueError for an npy that needs pickle."""
    import numpy as np

    base = ext.rsplit(".", 1)[-1]
    if base in IMAGE_EXTS:
        return decode_image(data).image  # upright RGB
    if base in ("txt", "text", "caption"):
        return data.decode("utf-8")
    if base == "json":
        return json.loads(data)
    if base == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if base == "cls":
        return int(data.decode().strip())
    return None
