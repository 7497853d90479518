"""The public evaluation sets, read from their published files: `load_benchmark(name, root)`.

Each loader follows the field names and nesting of the files as published (and as the reference
loaders read them: Karpathy's split files, Long-CLIP's Urban-1k and ShareGPT4V-1k readers, DOCCI's
descriptions, XM3600's captions.jsonl, SugarCrepe's `main_eval.py`, clip_benchmark's zero-shot
folders). Layout under `root` (a benchmark's files may also sit directly in `root`):

    coco/dataset_coco.json            coco/<filepath>/<filename>   (val2014/COCO_val2014_*.jpg)
    flickr30k/dataset_flickr30k.json  flickr30k/flickr30k-images/<filename>
    urban1k/caption/<n>.txt           urban1k/image/<n>.jpg
    docci/docci_descriptions.jsonlines                docci/images/<image_file>
    sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json   sharegpt4v/<image>
    xm3600/captions.jsonl             xm3600/images/<image/key>.jpg
    sugarcrepe/{add_obj,add_att,replace_obj,replace_att,replace_rel,swap_obj,swap_att}.json
                                      sugarcrepe/val2017/<filename>
    imagenet/classnames.txt           imagenet/val/<class folder>/<image>
    cra: coco/dataset_coco.json (captions only)

A file that is missing or not in its published shape raises `BenchmarkError` naming the file and
what is wrong. An image that is missing or that the one decoder refuses is skipped and counted
by reason (`missing_image`, `corrupt_image`, ...), like the training stream; `strict=True` raises
`BenchmarkError` at the first one instead. A null or blank caption is dropped (`bad_caption`).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import image_problem, reason_counts
from .templates import IMAGENET_TEMPLATES


class BenchmarkError(ValueError):
    """A benchmark file that is missing or malformed; the message names the file and the problem."""


@dataclass
class CaptionGroup:
    """Captions scored together: all of a retrieval set, one XM3600 language, one SugarCrepe file."""

    captions: list[str]
    image_index: list[int]
    """Per caption: the index of its image in `Benchmark.images` (CRA: the image id)."""
    negatives: list[str] = field(default_factory=list)
    """SugarCrepe: per caption, its hard negative (empty otherwise)."""


@dataclass
class Benchmark:
    """One benchmark, read and checked. `kind` says how `bench_run.score_benchmark` scores it:
    retrieval (one group, R@k both ways), multilingual (one group per language), pairs (one group
    per SugarCrepe file, positive vs negative), zeroshot (labels), cra (captions only)."""

    name: str
    kind: str
    images: list[str] = field(default_factory=list)
    """Image file paths (absolute or relative to the working directory)."""
    groups: dict[str, CaptionGroup] = field(default_factory=dict)
    labels: list[int] = field(default_factory=list)
    """zeroshot: per image, its class index into `classnames`."""
    classnames: list[str] = field(default_factory=list)
    templates: tuple[str, ...] = ()
    skipped: dict[str, list[str]] = field(default_factory=dict)
    """Reason -> where, for each image (or entry) left out."""
    dropped: dict[str, list[str]] = field(default_factory=dict)
    """Reason -> where, for each caption left out of a kept entry."""
    source: str = ""

    def reason_counts(self) -> dict[str, int]:
        return reason_counts(self.skipped, self.dropped)

    def summary(self) -> str:
        n_cap = sum(len(g.captions) for g in self.groups.values())
        line = f"{self.name} ({self.source}): {len(self.images)} images, "
        if self.kind == "zeroshot":
            line += f"{len(self.classnames)} classes x {len(self.templates)} templates"
        else:
            line += f"{n_cap} captions" + (f" in {len(self.groups)} groups" if len(self.groups) > 1 else "")
        counts = self.reason_counts()
        if counts:
            line += "; skipped/dropped " + ", ".join(f"{r}: {n}" for r, n in counts.items())
        return line


SUGARCREPE_FILES = ("add_obj", "add_att", "replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att")
SHAREGPT4V_FILE = "share-captioner_coco_lcs_sam_1246k_1107.json"
SHAREGPT4V_N = 1000
"""ShareGPT4V-1k: the first 1,000 entries of the ShareGPT4V captioner file (Long-CLIP, LLM2CLIP)."""

# name -> (folder under root, the file(s) whose presence marks the benchmark)
LAYOUT: dict[str, tuple[str, tuple[str, ...]]] = {
    "flickr30k": ("flickr30k", ("dataset_flickr30k.json",)),
    "coco": ("coco", ("dataset_coco.json",)),
    "sharegpt4v": ("sharegpt4v", (SHAREGPT4V_FILE,)),
    "urban1k": ("urban1k", ("caption", "image")),
    "docci": ("docci", ("docci_descriptions.jsonlines",)),
    "xm3600": ("xm3600", ("captions.jsonl",)),
    "imagenet": ("imagenet", ("classnames.txt", "val")),
    "cra": ("coco", ("dataset_coco.json",)),
    "sugarcrepe": ("sugarcrepe", tuple(f"{f}.json" for f in SUGARCREPE_FILES)),
}
BENCHMARKS = tuple(LAYOUT)
"""In the order of the results table: the paper's retrieval sets, XM3600, zero-shot, CRA, SugarCrepe."""


def bench_dir(name: str, root: str | Path) -> Path:
    """`root/<folder>` when it holds the benchmark's files, else `root` itself when it does."""
    folder, marks = LAYOUT[name]
    root = Path(root)
    for d in (root / folder, root):
        if all((d / m).exists() for m in marks):
            return d
    return root / folder


def missing_files(name: str, root: str | Path) -> list[Path]:
    """The marker files of benchmark `name` that are not under `root` (empty: it can run)."""
    d = bench_dir(name, root)
    return [d / m for m in LAYOUT[name][1] if not (d / m).exists()]


def find_benchmarks(root: str | Path) -> tuple[list[str], dict[str, list[Path]]]:
    """(benchmarks whose files are under root, {missing benchmark: its missing files})."""
    found, missing = [], {}
    for name in BENCHMARKS:
        m = missing_files(name, root)
        if m:
            missing[name] = m
        else:
            found.append(name)
    return found, missing


# ---------------------------------------------------------------- reading and checking

def _bad(path: Path, what: str) -> BenchmarkError:
    return BenchmarkError(f"{path}: {what}")


def _read_json(path: Path, lines: bool = False):
    if not path.is_file():
        raise _bad(path, "file not found (see the README's benchmark layout).")
    text = path.read_text(encoding="utf-8")
    if lines:  # JSON Lines: one object a line; a bad line is named by its line number in the file
        out = []
        for n, t in enumerate(text.splitlines(), 1):
            try:
                if t.strip():
                    out.append(json.loads(t))
            except json.JSONDecodeError as e:
                raise _bad(path, f"line {n} is not valid JSON ({e.msg} at column {e.colno}).") from e
        return out
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from e


def _field(obj, key: str, kind: type, path: Path, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise _bad(path, f"{where} has no '{key}' field (got {str(obj)[:80]!r}).")
    if not isinstance(obj[key], kind):
        raise _bad(path, f"{where}: '{key}' is {type(obj[key]).__name__}, expected {kind.__name__}.")
    return obj[key]


class _Builder:
    """Collects images (each path once), checks each by the one decoder, counts what is left out."""

    def __init__(self, name: str, kind: str, source: str, strict: bool, check_images: bool = True):
        self.b = Benchmark(name, kind, source=source)
        self.strict, self.check = strict, check_images
        self._index: dict[str, int | None] = {}

    def image(self, path: Path, where: str) -> int | None:
        """Index of the image at `path`, or None when it is missing or undecodable (counted once)."""
        key = str(path)
        if key not in self._index:
            problem = image_problem(path) if self.check else None
            if problem is not None:
                if self.strict:
                    raise BenchmarkError(f"{path}: {problem[0]} ({problem[1]}) for {where}; fix the file or run "
                                         "without --strict to skip and count such images.")
                self.b.skipped.setdefault(problem[0], []).append(where)
                self._index[key] = None
            else:
                self._index[key] = len(self.b.images)
                self.b.images.append(key)
        return self._index[key]

    def caption(self, group: str, text, image: int, where: str, negative=None) -> None:
        ok = isinstance(text, str) and text.strip() and (negative is None or
                                                         (isinstance(negative, str) and negative.strip()))
        if not ok:
            if self.strict:
                raise BenchmarkError(f"{self.b.source}: {where}: caption is null, blank or not a string; fix the "
                                     "entry or run without --strict to drop such captions.")
            self.b.dropped.setdefault("bad_caption", []).append(where)
            return
        g = self.b.groups.setdefault(group, CaptionGroup([], []))
        g.captions.append(text.strip())
        g.image_index.append(image)
        if negative is not None:
            g.negatives.append(negative.strip())

    def done(self) -> Benchmark:
        if not self.b.groups and self.b.kind != "zeroshot":
            raise BenchmarkError(f"{self.b.source}: no usable entries ({self.b.summary()}).")
        return self.b


# ---------------------------------------------------------------- loaders

KARPATHY_CAPTIONS = 5
"""Captions per image read from a Karpathy split file: the first 5 sentences (a few COCO images have
6 or 7; the 5k test split then gives 25,000 captions, as Long-CLIP's and LLM2CLIP's evaluations use)."""


def _karpathy(name: str, root: Path, image_dir: str, strict: bool, images: bool = True) -> Benchmark:
    """Karpathy split file: {"images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}]}]};
    the "test" split (COCO 5,000 images, Flickr30k 1,000), the "raw" text of the first 5 sentences."""
    fname = LAYOUT[name][1][0]
    d = bench_dir(name, root)
    path = d / fname
    obj = _read_json(path)
    entries = _field(obj, "images", list, path, "the top level")
    kind = "cra" if name == "cra" else "retrieval"
    b = _Builder(name, kind, str(path), strict, check_images=images)
    n_test = 0
    for n, e in enumerate(entries):
        split = _field(e, "split", str, path, f"images[{n}]")
        if split != "test":
            continue
        n_test += 1
        fn = _field(e, "filename", str, path, f"images[{n}]")
        sents = _field(e, "sentences", list, path, f"images[{n}] ({fn})")
        where = f"images[{n}] ({fn})"
        if images:
            idx = b.image(d / image_dir / e.get("filepath", "") / fn, where)
            if idx is None:
                continue
        else:
            idx = n
        for k, s in enumerate(sents[:KARPATHY_CAPTIONS]):
            raw = _field(s, "raw", object, path, f"images[{n}].sentences[{k}]")
            b.caption("", raw, idx, f"images[{n}].sentences[{k}]")
    if n_test == 0:
        raise _bad(path, "no entry has split 'test' (expected Karpathy's split file).")
    return b.done()


def load_coco(root, strict=False) -> Benchmark:
    return _karpathy("coco", root, "", strict)


def load_flickr30k(root, strict=False) -> Benchmark:
    return _karpathy("flickr30k", root, "flickr30k-images", strict)


def load_cra(root, strict=False) -> Benchmark:
    """CRA on COCO (LLM2CLIP): the captions of the Karpathy 5k test images, grouped by image."""
    return _karpathy("cra", root, "", strict, images=False)


def load_urban1k(root, strict=False) -> Benchmark:
    """Urban-1k (Long-CLIP): caption/<n>.txt (its first line) describes image/<n>.jpg, one to one."""
    d = bench_dir("urban1k", root)
    caps = sorted((d / "caption").glob("*.txt"))
    if not caps:
        raise _bad(d / "caption", "holds no .txt caption files.")
    b = _Builder("urban1k", "retrieval", str(d), strict)
    for p in caps:
        idx = b.image(d / "image" / f"{p.stem}.jpg", p.name)
        if idx is not None:
            lines = p.read_text(encoding="utf-8").splitlines()
            b.caption("", lines[0] if lines else "", idx, p.name)
    return b.done()


def load_docci(root, strict=False) -> Benchmark:
    """DOCCI: docci_descriptions.jsonlines, one {"example_id", "split", "image_file", "description"}
    a line; the entries with split "test" (5,000), images in images/<image_file>."""
    d = bench_dir("docci", root)
    path = d / LAYOUT["docci"][1][0]
    rows = _read_json(path, lines=True)
    b = _Builder("docci", "retrieval", str(path), strict)
    n_test = 0
    for n, e in enumerate(rows):
        if _field(e, "split", str, path, f"line {n + 1}") != "test":
            continue
        n_test += 1
        fn = _field(e, "image_file", str, path, f"line {n + 1}")
        where = f"line {n + 1} ({e.get('example_id', fn)})"
        idx = b.image(d / "images" / fn, where)
        if idx is not None:
            b.caption("", _field(e, "description", object, path, f"line {n + 1}"), idx, where)
    if n_test == 0:
        raise _bad(path, "no line has split 'test'.")
    return b.done()


def load_sharegpt4v(root, strict=False) -> Benchmark:
    """ShareGPT4V-1k: the first 1,000 entries of the captioner file, [{"id", "image", "conversations":
    [{"from": "human", ...}, {"from": "gpt", "value": caption}]}]; the caption is the first "gpt"
    turn with newlines turned into spaces; a skipped entry is not replaced by the 1,001st."""
    d = bench_dir("sharegpt4v", root)
    path = d / SHAREGPT4V_FILE
    rows = _read_json(path)
    if not isinstance(rows, list):
        raise _bad(path, f"top level is {type(rows).__name__}, expected a list of entries.")
    b = _Builder("sharegpt4v", "retrieval", str(path), strict)
    for n, e in enumerate(rows[:SHAREGPT4V_N]):
        img = _field(e, "image", str, path, f"entry {n}")
        conv = _field(e, "conversations", list, path, f"entry {n}")
        gpt = [t.get("value") for t in conv if isinstance(t, dict) and t.get("from") == "gpt"]
        if not gpt:
            raise _bad(path, f"entry {n} ({img}): 'conversations' has no turn from 'gpt'.")
        idx = b.image(d / img, f"entry {n} ({img})")
        if idx is not None:
            cap = gpt[0].replace("\n", " ") if isinstance(gpt[0], str) else gpt[0]
            b.caption("", cap, idx, f"entry {n} ({img})")
    return b.done()


def load_xm3600(root, strict=False) -> Benchmark:
    """XM3600: captions.jsonl, one {"image/key": key, "image/locale": loc, "<lang>": {"caption": [...],
    "caption/tokenized": ..., ...}, ...} a line; images/<key>.jpg. One group per language (every key
    not starting with "image/"), every "caption" of the language."""
    d = bench_dir("xm3600", root)
    path = d / "captions.jsonl"
    rows = _read_json(path, lines=True)
    b = _Builder("xm3600", "multilingual", str(path), strict)
    for n, e in enumerate(rows):
        key = _field(e, "image/key", str, path, f"line {n + 1}")
        langs = {k: v for k, v in e.items() if not k.startswith("image/")}
        if not langs:
            raise _bad(path, f"line {n + 1} ({key}) has no language entries.")
        idx = b.image(d / "images" / f"{key}.jpg", f"line {n + 1} ({key})")
        if idx is None:
            continue
        for lang, v in sorted(langs.items()):
            caps = _field(v, "caption", list, path, f"line {n + 1} ({key}).{lang}")
            for k, c in enumerate(caps):
                b.caption(lang, c, idx, f"line {n + 1} ({key}).{lang}.caption[{k}]")
    return b.done()


def load_sugarcrepe(root, strict=False) -> Benchmark:
    """SugarCrepe: seven files {"<i>": {"filename", "caption", "negative_caption"}}; COCO val2017
    images in val2017/<filename>. One group per file."""
    d = bench_dir("sugarcrepe", root)
    b = _Builder("sugarcrepe", "pairs", str(d), strict)
    for f in SUGARCREPE_FILES:
        path = d / f"{f}.json"
        obj = _read_json(path)
        if not isinstance(obj, dict):
            raise _bad(path, f"top level is {type(obj).__name__}, expected {{\"<index>\": {{...}}}}.")
        for i, e in obj.items():
            fn = _field(e, "filename", str, path, f"entry {i!r}")
            pos = _field(e, "caption", object, path, f"entry {i!r}")
            neg = _field(e, "negative_caption", object, path, f"entry {i!r}")
            idx = b.image(d / "val2017" / fn, f"{f}.json entry {i!r} ({fn})")
            if idx is not None:
                b.caption(f, pos, idx, f"{f}.json entry {i!r}", negative=neg)
    return b.done()


def load_imagenet(root, strict=False) -> Benchmark:
    """ImageNet-style zero-shot: val/<class folder>/<image>, and classnames.txt with one class name a
    line in the sorted order of the folders (clip_benchmark's convention); CLIP's 80 templates."""
    d = bench_dir("imagenet", root)
    path = d / "classnames.txt"
    if not path.is_file():
        raise _bad(path, "file not found (one class name a line, in sorted folder order).")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    folders = sorted(p for p in (d / "val").iterdir() if p.is_dir()) if (d / "val").is_dir() else []
    if not folders:
        raise _bad(d / "val", "holds no class folders.")
    if len(names) != len(folders):
        raise _bad(path, f"lists {len(names)} class names but {d / 'val'} has {len(folders)} class folders; "
                         "give one name per folder, in sorted folder order.")
    b = _Builder("imagenet", "zeroshot", str(d), strict)
    b.b.classnames, b.b.templates = names, IMAGENET_TEMPLATES
    for c, folder in enumerate(folders):
        for p in sorted(q for q in folder.iterdir() if q.is_file()):
            if b.image(p, f"{folder.name}/{p.name}") is not None:  # each path once: one label per image
                b.b.labels.append(c)
    if not b.b.images:
        raise BenchmarkError(f"{d / 'val'}: no usable images ({b.b.summary()}).")
    return b.done()


LOADERS: dict[str, Callable[..., Benchmark]] = {
    "flickr30k": load_flickr30k, "coco": load_coco, "sharegpt4v": load_sharegpt4v, "urban1k": load_urban1k,
    "docci": load_docci, "xm3600": load_xm3600, "sugarcrepe": load_sugarcrepe, "imagenet": load_imagenet,
    "cra": load_cra,
}


def load_benchmark(name: str, root: str | Path, strict: bool = False) -> Benchmark:
    """Read benchmark `name` from its published files under `root` (see the module doc)."""
    if name not in LOADERS:
        raise BenchmarkError(f"unknown benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}, or all.")
    missing = missing_files(name, root)
    if missing:
        raise _bad(missing[0], f"not found: benchmark {name} needs {', '.join(LAYOUT[name][1])} in "
                               f"{Path(root) / LAYOUT[name][0]} (or in {root}).")
    return LOADERS[name](Path(root), strict=strict)
