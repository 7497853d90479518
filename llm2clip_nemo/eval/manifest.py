"""An `EvalSet` (`eval.evalset`) from a JSON manifest or from decoded samples.

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
from dataclasses import dataclass
from pathlib import Path

from .evalset import EvalSet, ManifestError, image_problem


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
