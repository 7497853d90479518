"""Caption policy: pick one caption per sample among named fields, by weight (or one per field, for
`caption_sampling=all`), and count picks.

Field names: `txt` is the alt text member; any other name is looked up in the sample's json
(`long`, `short`, ...). A json value that is a list (e.g. `short_list`) contributes one element
drawn at random. Captions are stripped; fields absent or blank in a sample are left out and the weights renormalised.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .samples import field_captions


@dataclass(frozen=True)
class CaptionChoice:
    text: str
    field: str


class CaptionPolicy:
    def __init__(self, weights: dict[str, float]):
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(
                f"data.caption_fields={dict(weights)} needs at least one field with weight > 0, e.g. {{txt: 1.0}} "
                f"or {{txt: 0.5, long: 0.5}}"
            )
        self.fields = [f for f, w in weights.items() if w > 0]
        self.weights = [float(weights[f]) for f in self.fields]

    @staticmethod
    def candidates(field: str, txt: str | None, meta: dict | None) -> list[str]:
        """The field's captions by the one extraction rule (`data.samples.field_captions`)."""
        return field_captions(field, txt, meta)

    def choose(self, txt: str | None, meta: dict | None, rng: random.Random) -> CaptionChoice | None:
        """One caption, or None when no weighted field has text (the caller counts a skip)."""
        present, weights, cands = [], [], []
        for f, w in zip(self.fields, self.weights):
            c = self.candidates(f, txt, meta)
            if c:
                present.append(f)
                weights.append(w)
                cands.append(c)
        if not present:
            return None
        i = rng.choices(range(len(present)), weights=weights)[0] if len(present) > 1 else 0
        c = cands[i]
        return CaptionChoice(text=c[rng.randrange(len(c))] if len(c) > 1 else c[0], field=present[i])

    def choose_all(self, txt: str | None, meta: dict | None, rng: random.Random) -> list[CaptionChoice | None]:
        """One caption per weighted field, in `self.fields` order (None where the sample has no text
        for that field); a list-valued field contributes one element drawn at random."""
        out: list[CaptionChoice | None] = []
        for f in self.fields:
            c = self.candidates(f, txt, meta)
            out.append(CaptionChoice(text=c[rng.randrange(len(c))] if len(c) > 1 else c[0], field=f) if c else None)
        return out
