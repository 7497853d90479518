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

from collections.abc import Callable
from pathlib import Path

from .bench_set import Benchmark, BenchmarkError, Builder, bad, field_of, read_json
from .templates import IMAGENET_TEMPLATES

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
    obj = read_json(path)
    entries = field_of(obj, "images", list, path, "the top level")
    kind = "cra" if name == "cra" else "retrieval"
    b = Builder(name, kind, str(path), strict, check_images=images)
    n_test = 0
    for n, e in enumerate(entries):
        split = field_of(e, "split", str, path, f"images[{n}]")
        if split != "test":
            continue
        n_test += 1
        fn = field_of(e, "filename", str, path, f"images[{n}]")
        sents = field_of(e, "sentences", list, path, f"images[{n}] ({fn})")
        where = f"images[{n}] ({fn})"
        if images:
            idx = b.image(d / image_dir / e.get("filepath", "") / fn, where)
            if idx is None:
                continue
        else:
            idx = n
        for k, s in enumerate(sents[:KARPATHY_CAPTIONS]):
            raw = field_of(s, "raw", object, path, f"images[{n}].sentences[{k}]")
            b.caption("", raw, idx, f"images[{n}].sentences[{k}]")
    if n_test == 0:
        raise bad(path, "no entry has split 'test' (expected Karpathy's split file).")
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
        raise bad(d / "caption", "holds no .txt caption files.")
    b = Builder("urban1k", "retrieval", str(d), strict)
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
    rows = read_json(path, lines=True)
    b = Builder("docci", "retrieval", str(path), strict)
    n_test = 0
    for n, e in enumerate(rows):
        if field_of(e, "split", str, path, f"line {n + 1}") != "test":
            continue
        n_test += 1
        fn = field_of(e, "image_file", str, path, f"line {n + 1}")
        where = f"line {n + 1} ({e.get('example_id', fn)})"
        idx = b.image(d / "images" / fn, where)
        if idx is not None:
            b.caption("", field_of(e, "description", object, path, f"line {n + 1}"), idx, where)
    if n_test == 0:
        raise bad(path, "no line has split 'test'.")
    return b.done()


def load_sharegpt4v(root, strict=False) -> Benchmark:
    """ShareGPT4V-1k: the first 1,000 entries of the captioner file, [{"id", "image", "conversations":
    [{"from": "human", ...}, {"from": "gpt", "value": caption}]}]; the caption is the first "gpt"
    turn with newlines turned into spaces; a skipped entry is not replaced by the 1,001st."""
    d = bench_dir("sharegpt4v", root)
    path = d / SHAREGPT4V_FILE
    rows = read_json(path)
    if not isinstance(rows, list):
        raise bad(path, f"top level is {type(rows).__name__}, expected a list of entries.")
    b = Builder("sharegpt4v", "retrieval", str(path), strict)
    for n, e in enumerate(rows[:SHAREGPT4V_N]):
        img = field_of(e, "image", str, path, f"entry {n}")
        conv = field_of(e, "conversations", list, path, f"entry {n}")
        gpt = [t.get("value") for t in conv if isinstance(t, dict) and t.get("from") == "gpt"]
        if not gpt:
            raise bad(path, f"entry {n} ({img}): 'conversations' has no turn from 'gpt'.")
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
    rows = read_json(path, lines=True)
    b = Builder("xm3600", "multilingual", str(path), strict)
    for n, e in enumerate(rows):
        key = field_of(e, "image/key", str, path, f"line {n + 1}")
        langs = {k: v for k, v in e.items() if not k.startswith("image/")}
        if not langs:
            raise bad(path, f"line {n + 1} ({key}) has no language entries.")
        idx = b.image(d / "images" / f"{key}.jpg", f"line {n + 1} ({key})")
        if idx is None:
            continue
        for lang, v in sorted(langs.items()):
            caps = field_of(v, "caption", list, path, f"line {n + 1} ({key}).{lang}")
            for k, c in enumerate(caps):
                b.caption(lang, c, idx, f"line {n + 1} ({key}).{lang}.caption[{k}]")
    return b.done()


def load_sugarcrepe(root, strict=False) -> Benchmark:
    """SugarCrepe: seven files {"<i>": {"filename", "caption", "negative_caption"}}; COCO val2017
    images in val2017/<filename>. One group per file."""
    d = bench_dir("sugarcrepe", root)
    b = Builder("sugarcrepe", "pairs", str(d), strict)
    for f in SUGARCREPE_FILES:
        path = d / f"{f}.json"
        obj = read_json(path)
        if not isinstance(obj, dict):
            raise bad(path, f"top level is {type(obj).__name__}, expected {{\"<index>\": {{...}}}}.")
        for i, e in obj.items():
            fn = field_of(e, "filename", str, path, f"entry {i!r}")
            pos = field_of(e, "caption", object, path, f"entry {i!r}")
            neg = field_of(e, "negative_caption", object, path, f"entry {i!r}")
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
        raise bad(path, "file not found (one class name a line, in sorted folder order).")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    folders = sorted(p for p in (d / "val").iterdir() if p.is_dir()) if (d / "val").is_dir() else []
    if not folders:
        raise bad(d / "val", "holds no class folders.")
    if len(names) != len(folders):
        raise bad(path, f"lists {len(names)} class names but {d / 'val'} has {len(folders)} class folders; "
                         "give one name per folder, in sorted folder order.")
    b = Builder("imagenet", "zeroshot", str(d), strict)
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
        raise bad(missing[0], f"not found: benchmark {name} needs {', '.join(LAYOUT[name][1])} in "
                               f"{Path(root) / LAYOUT[name][0]} (or in {root}).")
    return LOADERS[name](Path(root), strict=strict)


def resolve_names(spec: str, root: str | Path) -> tuple[list[str], dict[str, list[Path]]]:
    """(benchmarks to run, {benchmark: missing files}) for `all` (every benchmark whose files are
    under `root`) or a comma list of names. Raises `BenchmarkError` for an unknown name, or `all`
    when nothing is under `root`."""
    if spec == "all":
        found, missing = find_benchmarks(root)
        if not found:
            raise BenchmarkError(f"{root}: no benchmark files found; expected e.g. "
                                 f"{Path(root) / 'coco' / 'dataset_coco.json'} (see the README's benchmark layout).")
        return found, missing
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise BenchmarkError(f"unknown benchmark {unknown[0] if unknown else spec!r}: choose from "
                             f"{', '.join(BENCHMARKS)}, or all.")
    return names, {}
