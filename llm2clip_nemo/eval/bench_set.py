"""A public benchmark in memory (`Benchmark`: images, caption groups, labels, what was left out) and
how its loaders build and check one (`Builder`, the JSON readers that name the file and the entry).

The loaders of each published layout are in `eval.benchmarks`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .evalset import image_problem, reason_counts


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


def bad(path: Path, what: str) -> BenchmarkError:
    """`BenchmarkError("{path}: {what}")`."""
    return BenchmarkError(f"{path}: {what}")


def read_json(path: Path, lines: bool = False):
    """The JSON (or, lines=True, JSON Lines) content of `path`; `BenchmarkError` naming the file, and
    the line or column, when it is missing or not valid JSON."""
    if not path.is_file():
        raise bad(path, "file not found (see the README's benchmark layout).")
    text = path.read_text(encoding="utf-8")
    if lines:  # JSON Lines: one object a line; a bad line is named by its line number in the file
        out = []
        for n, t in enumerate(text.splitlines(), 1):
            try:
                if t.strip():
                    out.append(json.loads(t))
            except json.JSONDecodeError as e:
                raise bad(path, f"line {n} is not valid JSON ({e.msg} at column {e.colno}).") from e
        return out
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from e


def field_of(obj, key: str, kind: type, path: Path, where: str):
    """`obj[key]`, checked to be a `kind`; `BenchmarkError` naming `path`, `where` and the field otherwise."""
    if not isinstance(obj, dict) or key not in obj:
        raise bad(path, f"{where} has no '{key}' field (got {str(obj)[:80]!r}).")
    if not isinstance(obj[key], kind):
        raise bad(path, f"{where}: '{key}' is {type(obj[key]).__name__}, expected {kind.__name__}.")
    return obj[key]


class Builder:
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
