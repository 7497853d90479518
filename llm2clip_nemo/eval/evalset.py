"""`EvalSet`: images, their captions and `text_to_image`, labels, and what was left out by reason;
the one check of an image file (`image_problem`).

Readers build it: `eval.manifest` (JSON manifests, decoded samples), `eval.data` (shards),
`eval.bench_set` (public benchmarks). Problems are counted by the reason names the training stream
uses (`data.samples`, `data.images.IMAGE_REASONS`).
"""
from __future__ import annotations

from collections.abc import Sequence
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


def image_problem(path: Path) -> tuple[str, str] | None:
    """None if the one decoder decodes the file, else (reason, detail); a file not there is missing_image."""
    if not path.is_file():
        return "missing_image", f"{path} does not exist"
    try:
        check_image(path.read_bytes())
    except ImageDecodeError as e:
        return e.reason, e.detail
    return None
