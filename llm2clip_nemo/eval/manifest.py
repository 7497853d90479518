"""Evaluation data: images, their captions, and `text_to_image`, from a JSON manifest or samples.

Manifest formats (detected from the JSON's shape):
- simple: a list (or JSON Lines, one object a line) of `{"image": path, "captions": [..]}`
  (or `"caption": str`), optional `"split"`, `"key"`, `"label"` (a class name for zero-shot);
- karpathy: the Flickr30k/COCO split files, `{"images": [{"filename", "filepath"?, "split",
  "sentences": [{"raw"}]}]}`;
- coco: a COCO captions annotation file, `{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}` (one split per file).
Relative image paths resolve against `image_root` (default: the manifest's folder).
Problems are counted by the reason names the training stream uses (`data.samples`): an image
file that does not exist is `missing_image`, one the decoder refuses gets its reason
(`corrupt_image`, `truncated_image`, `image_too_large`, ...): the entry is skipped. A caption that is
null, blank or not a string is dropped and counted as `bad_caption`; an entry left without any
caption (and without a label) is skipped as `missing_caption`. `strict=True` raises at the first
problem instead, naming the manifest entry (`EvalSet.summary()` lists the counts otherwise).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from ..data.images import IMAGE_REASONS, ImageDecodeError, check_image, decode_image


class ManifestError(ValueError):
    """A manifest that cannot be used as given; the message names the file, the entry and the fix."""


def reason_counts(skipped: dict[str, list[str]], dropped: dict[str, list[str]]) -> dict[str, int]:
    """reason -> count over skipped samples and dropped parts (each dict maps a reason to where it
    happened), sorted by reason: the shape of the training stream's `skipped` summary."""
    out: dict[str, int] = {}
    for d in (skipped, dropped):
        for r, where in d.items():
            out[r] = out.get(r, 0) + len(where)
    return dict(sorted(out.items()))


@dataclass
class EvalSet:
    """Images with their captions, in the layout the retrieval metrics take."""

    images: list
    """Per image: a file path (str) from a manifest, or an in-memory image (PIL, array, tensor)."""
    captions: list[str]
    """All captions, grouped by image in image order."""
    text_to_image: list[int]
    """Per caption: the index of its image in `images`."""
    keys: list[str]
    """Per image: a stable name (file path relative to the root, or the sample's __key__)."""
    labels: list[str | None] = field(default_factory=list)
    """Per image: a class name for zero-shot classification, or None (empty when none has one)."""
    skipped: dict[str, list[str]] = field(default_factory=dict)
    """Reason -> where (manifest entry or shard:key) of each skipped sample, e.g. {"missing_image": [...]}."""
    dropped: dict[str, list[str]] = field(default_factory=dict)
    """Reason -> where of each part dropped from a kept sample (`bad_caption`, `bad_json`, `bad_text`, ...)."""
    source: str = ""
    """Where the set came from (manifest path and format), for reports."""

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    @property
    def missing(self) -> list[str]:
        """Skipped because no image file or member was there."""
        return self.skipped.get("missing_image", [])

    @property
    def unreadable(self) -> list[str]:
        """Skipped because the decoder refused the image (any of `data.images.IMAGE_REASONS`)."""
        return [w for r in IMAGE_REASONS for w in self.skipped.get(r, [])]

    def reason_counts(self) -> dict[str, int]:
        """Every reason counted, skipped samples and dropped parts alike (the stream's `skipped` dict)."""
        return reason_counts(self.skipped, self.dropped)

    def add_problem(self, reason: str, where: str, fatal: bool) -> None:
        (self.skipped if fatal else self.dropped).setdefault(reason, []).append(where)

    def summary(self) -> str:
        line = f"{self.source or 'eval set'}: {self.n_images} images, {self.n_captions} captions"
        if self.n_skipped:
            first = next(w for v in self.skipped.values() for w in v)
            counts = ", ".join(f"{r}: {len(v)}" for r, v in sorted(self.skipped.items()))
            line += f"; skipped {self.n_skipped} samples ({counts}; first: {first})"
        if self.dropped:
            line += "; dropped " + ", ".join(f"{r}: {len(v)}" for r, v in sorted(self.dropped.items()))
        return line

    def load_image(self, i: int):
        """Image i as an upright RGB PIL image by the one decoder (in-memory non-PIL images unchanged)."""
        img = self.images[i]
        if isinstance(img, (str, Path)):
            return decode_image(Path(img).read_bytes()).image
        if isinstance(img, Image.Image):
            return decode_image(img).image
        return img

    def label_indices(self, classnames: Sequence[str] | None = None) -> tuple[list[str], list[int]]:
        """(class names, class index per image) for zero-shot; classes default to sorted labels.

        Every image needs a label (use a set built only from labelled entries).
        """
        if not self.labels or any(x is None for x in self.labels):
            n = sum(x is None for x in self.labels) if self.labels else self.n_images
            raise ManifestError(f"{self.source}: {n} of {self.n_images} images have no 'label'; zero-shot "
                                "classification needs one class name per image.")
        names = list(classnames) if classnames is not None else sorted(set(self.labels))
        index = {c: i for i, c in enumerate(names)}
        unknown = sorted(set(self.labels) - set(index))
        if unknown:
            raise ManifestError(f"{self.source}: labels {unknown[:5]} are not among the {len(names)} class names.")
        return names, [index[x] for x in self.labels]

    def captioned(self) -> EvalSet:
        """The subset of images that have at least one caption (retrieval needs one per image)."""
        has = sorted(set(self.text_to_image))
        if len(has) == self.n_images:
            return self
        new_index = {old: new for new, old in enumerate(has)}
        return replace(
            self,
            images=[self.images[i] for i in has],
            keys=[self.keys[i] for i in has],
            labels=[self.labels[i] for i in has] if self.labels else [],
            text_to_image=[new_index[i] for i in self.text_to_image],
        )


@dataclass
class _Entry:
    key: str
    image: object
    captions: list[str]
    label: str | None = None
    where: str = ""
    """The manifest entry, for messages: 'entry 3 (img3.png)'."""
    bad_captions: int = 0
    """Captions dropped: null, blank or not a string."""


def _clean_captions(caps: list) -> tuple[list[str], int]:
    """(usable captions stripped, number dropped): strings that are not blank; null and others are dropped."""
    good = [c.strip() for c in caps if isinstance(c, str) and c.strip()]
    return good, len(caps) - len(good)


# ---------------------------------------------------------------- parsing

def _read_json(path: Path):
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from e


def detect_format(obj) -> str:
    """'simple', 'karpathy' or 'coco', from the JSON's shape."""
    if isinstance(obj, list):
        return "simple"
    if isinstance(obj, dict) and isinstance(obj.get("images"), list):
        if "annotations" in obj:
            return "coco"
        first = obj["images"][0] if obj["images"] else {}
        if "sentences" in first or "filename" in first:
            return "karpathy"
    keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    raise ManifestError(
        f"unrecognised manifest layout (top level: {keys}): expected a list of {{'image', 'captions'}} "
        "entries, a Karpathy split file {'images': [{'filename', 'sentences'}]}, or a COCO captions "
        "file {'images': [...], 'annotations': [...]}."
    )


def _split_ok(entry_split, wanted: set[str] | None) -> bool:
    return wanted is None or entry_split in wanted


def _parse_simple(obj: list, wanted, where: str) -> list[_Entry]:
    out = []
    for n, e in enumerate(obj):
        if not isinstance(e, dict) or "image" not in e:
            raise ManifestError(f"{where}: entry {n} has no 'image' field (got {e!r:.80}).")
        if not _split_ok(e.get("split"), wanted):
            continue
        if not any(k in e for k in ("captions", "caption", "label")):
            raise ManifestError(f"{where}: entry {n} ({e['image']}) has neither 'captions', 'caption' nor 'label'.")
        caps = e.get("captions", [e["caption"]] if "caption" in e else [])
        caps, bad = _clean_captions(caps if isinstance(caps, list) else [caps])
        label = e.get("label")
        out.append(_Entry(str(e.get("key", e["image"])), e["image"], caps, None if label is None else str(label),
                          f"entry {n} ({e['image']})", bad))
    return out


def _parse_karpathy(obj: dict, wanted) -> list[_Entry]:
    out = []
    for n, e in enumerate(obj["images"]):
        if not _split_ok(e.get("split"), wanted):
            continue
        rel = str(Path(e.get("filepath", "")) / e["filename"])
        caps = [s.get("raw") if "raw" in s else " ".join(s.get("tokens") or []) for s in e.get("sentences", [])]
        caps, bad = _clean_captions(caps)
        out.append(_Entry(rel, rel, caps, where=f"images[{n}] ({rel})", bad_captions=bad))
    return out


def _parse_coco(obj: dict, where: str) -> list[_Entry]:
    by_id = {img["id"]: _Entry(img["file_name"], img["file_name"], [], where=f"images[{n}] ({img['file_name']})")
             for n, img in enumerate(obj["images"])}
    for a in obj["annotations"]:
        if a["image_id"] not in by_id:
            raise ManifestError(f"{where}: annotation {a.get('id', '?')} refers to image_id {a['image_id']} "
                                "that 'images' does not list.")
        e = by_id[a["image_id"]]
        caps, bad = _clean_captions([a.get("caption")])
        e.captions += caps
        e.bad_captions += bad
    return list(by_id.values())


# ---------------------------------------------------------------- image checks and assembly

def image_problem(path: Path) -> tuple[str, str] | None:
    """None if the one decoder decodes the file, else (reason, detail); a file not there is missing_image."""
    if not path.is_file():
        return "missing_image", f"{path} does not exist"
    try:
        check_image(path.read_bytes())
    except ImageDecodeError as e:
        return e.reason, e.detail
    return None


def _assemble(entries: list[_Entry], es: EvalSet) -> EvalSet:
    labels = []
    for e in entries:
        idx = len(es.images)
        es.images.append(e.image)
        es.keys.append(e.key)
        labels.append(e.label)
        es.captions.extend(e.captions)
        es.text_to_image.extend([idx] * len(e.captions))
    es.labels = labels if any(x is not None for x in labels) else []
    return es


def load_manifest(path: str | Path, image_root: str | Path | None = None, split: str | Sequence[str] | None = None,
                  strict: bool = False, check_images: bool = True) -> EvalSet:
    """Read a manifest (format detected), keep `split` (a name or several), check the images.

    check_images: decode each image once, so a missing, corrupt or truncated file is reported
    here rather than half-way through feature extraction. strict: raise `ManifestError` on the
    first problem (see the module docstring) instead of skipping, naming the manifest entry.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist.")
    root = Path(image_root) if image_root is not None else path.parent
    obj = _read_json(path)
    fmt = detect_format(obj)
    wanted = None if split is None else ({split} if isinstance(split, str) else set(split))
    if fmt == "simple":
        entries = _parse_simple(obj, wanted, str(path))
    elif fmt == "karpathy":
        entries = _parse_karpathy(obj, wanted)
    else:
        if wanted is not None:
            raise ManifestError(f"{path} is a COCO captions file, which holds one split: pass the file of the "
                                f"split you want and split=None (got split={split!r}).")
        entries = _parse_coco(obj, str(path))
    if not entries:
        found = "" if wanted is None else f" for split={sorted(wanted)}"
        raise ManifestError(f"{path} ({fmt}) has no entries{found}.")
    es = EvalSet(images=[], captions=[], text_to_image=[], keys=[], source=f"{path} ({fmt})")
    kept = []
    for e in entries:
        e.image = str(root / e.image)
        # the order of data.samples.check_sample: dropped parts, missing image, missing caption, decode
        problem = None
        if e.bad_captions:
            problem = ("bad_caption", f"{e.bad_captions} caption(s) null, blank or not a string", False)
        if check_images and not Path(e.image).is_file():
            problem = ("missing_image", f"{e.image} does not exist", True)
        elif not e.captions and e.label is None:
            problem = ("missing_caption", "no usable caption and no label", True)
        elif check_images and (img := image_problem(Path(e.image))) is not None:
            problem = (*img, True)
        if problem is not None and strict:
            raise ManifestError(f"{path}: {e.where}: {problem[0]} ({problem[1]}); fix the entry or image_root "
                                f"(now {root}), or run without strict to skip such entries.")
        if e.bad_captions:
            es.add_problem("bad_caption", e.where, fatal=False)
        if problem is not None and problem[2]:
            es.add_problem(problem[0], e.where, fatal=True)
        else:
            kept.append(e)
    _assemble(kept, es)
    return es


IMAGE_KEYS = ("image", "jpg", "jpeg", "png", "webp")


def from_samples(samples: Iterable[dict], image_keys: str | Sequence[str] = IMAGE_KEYS,
                 captions_key: str = "captions", caption_keys: Sequence[str] = ("caption", "txt"),
                 captions_fn: Callable[[dict], list[str]] | None = None, label_key: str = "label",
                 source: str = "samples") -> EvalSet:
    """The same structure from decoded samples (e.g. webdataset dicts), images kept in memory.

    The image is the first of `image_keys` present (PIL image, array or tensor; webdataset's
    decoded `jpg`/`png`/`webp` included). Captions: `captions_fn(sample)` when given (e.g. to read
    a long re-caption from the sample's json), else `captions_key` (a list), else the first of
    `caption_keys` (a string). A sample without an image is skipped as `missing_image` by its
    `__key__`; captions that are null, blank or not strings are dropped as `bad_caption`.
    """
    image_keys = [image_keys] if isinstance(image_keys, str) else list(image_keys)
    entries, missing, bad = [], [], []
    for n, s in enumerate(samples):
        key = str(s.get("__key__", n))
        image = next((s[k] for k in image_keys if s.get(k) is not None), None)
        if image is None:
            missing.append(key)
            continue
        if captions_fn is not None:
            caps = captions_fn(s)
        else:
            caps = s.get(captions_key)
            if caps is None:
                caps = [s[k] for k in caption_keys if s.get(k)][:1]
        caps, n_bad = _clean_captions(list(caps) if isinstance(caps, (list, tuple)) else [caps])
        if n_bad:
            bad.append(key)
        entries.append(_Entry(key, image, caps, s.get(label_key)))
    es = _assemble(entries, EvalSet(images=[], captions=[], text_to_image=[], keys=[], source=source))
    for key in missing:
        es.add_problem("missing_image", key, fatal=True)
    for key in bad:
        es.add_problem("bad_caption", key, fatal=False)
    return es
