"""Evaluation data: images, their captions, and `text_to_image`, from a JSON manifest or samples.

Manifest formats (detected from the JSON's shape):
- simple: a list (or JSON Lines, one object a line) of `{"image": path, "captions": [..]}`
  (or `"caption": str`), optional `"split"`, `"key"`, `"label"` (a class name for zero-shot);
- karpathy: the Flickr30k/COCO split files, `{"images": [{"filename", "filepath"?, "split",
  "sentences": [{"raw"}]}]}`;
- coco: a COCO captions annotation file, `{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}` (one split per file).
Relative image paths resolve against `image_root` (default: the manifest's folder). Missing or
unreadable images are skipped and counted (`EvalSet.summary()`), or raise with `strict=True`.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image


class ManifestError(ValueError):
    """A manifest that cannot be used as given; the message names the file, the entry and the fix."""


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
    missing: list[str] = field(default_factory=list)
    """Image paths (or sample keys) skipped because the file does not exist or no image was given."""
    unreadable: list[str] = field(default_factory=list)
    """Image paths skipped because the file is not an image PIL can open."""
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
        return len(self.missing) + len(self.unreadable)

    def summary(self) -> str:
        line = f"{self.source or 'eval set'}: {self.n_images} images, {self.n_captions} captions"
        if self.n_skipped:
            first = (self.missing or self.unreadable)[0]
            line += (f"; skipped {self.n_skipped} images ({len(self.missing)} missing, "
                     f"{len(self.unreadable)} unreadable; first: {first})")
        return line

    def load_image(self, i: int):
        """Image i as an RGB PIL image (in-memory non-PIL images are returned unchanged)."""
        img = self.images[i]
        if isinstance(img, (str, Path)):
            with Image.open(img) as f:
                return f.convert("RGB")
        if isinstance(img, Image.Image):
            return img.convert("RGB")
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
        caps = e.get("captions", [e["caption"]] if "caption" in e else [])
        if isinstance(caps, str):
            caps = [caps]
        if not caps and "label" not in e:
            raise ManifestError(f"{where}: entry {n} ({e['image']}) has neither 'captions', 'caption' nor 'label'.")
        out.append(_Entry(str(e.get("key", e["image"])), e["image"], [str(c) for c in caps], e.get("label")))
    return out


def _parse_karpathy(obj: dict, wanted) -> list[_Entry]:
    out = []
    for e in obj["images"]:
        if not _split_ok(e.get("split"), wanted):
            continue
        rel = str(Path(e.get("filepath", "")) / e["filename"])
        caps = [s["raw"] if "raw" in s else " ".join(s["tokens"]) for s in e.get("sentences", [])]
        out.append(_Entry(rel, rel, caps))
    return out


def _parse_coco(obj: dict, where: str) -> list[_Entry]:
    by_id = {img["id"]: _Entry(img["file_name"], img["file_name"], []) for img in obj["images"]}
    for a in obj["annotations"]:
        if a["image_id"] not in by_id:
            raise ManifestError(f"{where}: annotation {a.get('id', '?')} refers to image_id {a['image_id']} "
                                "that 'images' does not list.")
        by_id[a["image_id"]].captions.append(a["caption"].strip())
    return list(by_id.values())


# ---------------------------------------------------------------- image checks and assembly

def _image_problem(path: Path) -> str | None:
    """None if PIL can open the file's header, else 'missing' or 'unreadable'."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as f:
            f.size  # noqa: B018 - the header parse is the check
    except (OSError, ValueError, SyntaxError):
        return "unreadable"
    return None


def _assemble(entries: list[_Entry], source: str) -> EvalSet:
    es = EvalSet(images=[], captions=[], text_to_image=[], keys=[], source=source)
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

    check_images: open each image's header once, so a missing or corrupt file is reported here
    rather than half-way through feature extraction. strict: raise on the first problem instead
    of skipping (the error names the first bad path and how many there are).
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
    for e in entries:
        e.image = str(root / e.image)
    missing, unreadable, kept = [], [], []
    for e in entries:
        problem = _image_problem(Path(e.image)) if check_images else None
        if problem is None:
            kept.append(e)
        else:
            (missing if problem == "missing" else unreadable).append(e.image)
    if strict and (missing or unreadable):
        first = (missing or unreadable)[0]
        kind = "missing" if missing else "unreadable"
        raise ManifestError(
            f"{len(missing) + len(unreadable)} of {len(entries)} images in {path} are missing or unreadable "
            f"(first: {first}, {kind}); fix image_root (now {root}) or the paths, or run without strict "
            "to skip them."
        )
    es = _assemble(kept, f"{path} ({fmt})")
    es.missing, es.unreadable = missing, unreadable
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
    `caption_keys` (a string). A sample without an image is skipped and counted in `missing` by
    its `__key__`.
    """
    image_keys = [image_keys] if isinstance(image_keys, str) else list(image_keys)
    entries, missing = [], []
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
        if isinstance(caps, str):
            caps = [caps]
        entries.append(_Entry(key, image, [str(c) for c in caps], s.get(label_key)))
    es = _assemble(entries, source)
    es.missing = missing
    return es
