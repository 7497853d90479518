"""Emoji metadata for the demo dataset: Unicode names, groups, CLDR annotations, base concepts, long captions.

Sources: Unicode `emoji-test.txt` (names, group, subgroup, version; Debian `unicode-data`), CLDR
`annotations/*.xml` and `annotationsDerived/*.xml` (names in other languages, keywords; Debian
`unicode-cldr-core`) and, without those files, the PyPI package `emoji` (names, aliases, names in
13 languages). A base concept strips skin tone, gender and hair modifiers (`base_concept_keys`), so
the demo split keeps every variant of one emoji on one side.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

SKIN_TONES = {0x1F3FB: "light", 0x1F3FC: "medium-light", 0x1F3FD: "medium", 0x1F3FE: "medium-dark", 0x1F3FF: "dark"}
HAIR = {0x1F9B0: "red hair", 0x1F9B1: "curly hair", 0x1F9B2: "bald", 0x1F9B3: "white hair"}
GENDER_SIGNS = {0x2640, 0x2642}
PERSON = {0x1F468: 0x1F9D1, 0x1F469: 0x1F9D1, 0x1F466: 0x1F9D2, 0x1F467: 0x1F9D2}  # man/woman -> person, boy/girl -> child
ZWJ, VS16 = 0x200D, 0xFE0F
_MODIFIER_WORDS = {"light", "medium-light", "medium", "medium-dark", "dark", "skin", "tone", "red", "curly", "white",
                   "bald", "blond", "hair", "man", "woman", "person", "men", "women", "people", "boy", "girl", "child", "beard"}
_GENDER_WORDS = {"man", "woman", "person", "men", "women", "people", "boy", "girl", "child"}


@dataclass
class EmojiEntry:
    """One emoji: its codepoints, Unicode name, group, subgroup and emoji version (None when unknown)."""

    cps: tuple[int, ...]
    name: str
    group: str | None = None
    subgroup: str | None = None
    version: str | None = None


def parse_emoji_test(path: str) -> list[EmojiEntry]:
    """The fully-qualified and component entries of a Unicode `emoji-test.txt`, in file order."""
    out, group, subgroup = [], None, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
            elif line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            elif line.strip() and not line.startswith("#"):
                cps, rest = line.split(";", 1)
                status, comment = rest.split("#", 1)
                if status.strip() not in ("fully-qualified", "component"):
                    continue
                _, version, name = comment.strip().split(" ", 2)
                out.append(EmojiEntry(tuple(int(c, 16) for c in cps.split()), name.strip(), group, subgroup, version))
    return out


def entries_from_emoji_package() -> list[EmojiEntry]:
    """The same entries from the `emoji` package (no group or subgroup), sorted by codepoints."""
    import emoji

    out = []
    for ch, d in emoji.EMOJI_DATA.items():
        if d.get("status") in (emoji.STATUS["fully_qualified"], emoji.STATUS["component"]):
            out.append(EmojiEntry(tuple(ord(c) for c in ch), pkg_name(d["en"]), version=f"E{d.get('E')}"))
    return sorted(out, key=lambda e: e.cps)


def pkg_name(s: str) -> str:
    """An `emoji` package name (':waving_hand:') as words ('waving hand')."""
    return s.strip(":").replace("_", " ")


def parse_cldr(cldr_dir: str, lang: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """CLDR annotations of one language: (names by emoji string, keywords by emoji string)."""
    names, keywords = {}, {}
    for sub in ("annotations", "annotationsDerived"):
        p = os.path.join(cldr_dir, sub, f"{lang}.xml")
        if not os.path.isfile(p):
            continue
        for a in ET.parse(p).getroot().iter("annotation"):
            cp, text = a.get("cp"), (a.text or "").strip()
            if not cp or not text or text == "↑↑↑":
                continue
            if a.get("type") == "tts":
                names[cp] = text
            else:
                keywords[cp] = [k.strip() for k in text.split("|") if k.strip()]
    return names, keywords


def cldr_lookup(d: dict, s: str):
    """`d[s]`, or `d[s without VS16]` (CLDR keys some emoji without the variation selector); None when absent."""
    return d.get(s) or d.get(s.replace("\ufe0f", ""))


def base_concept_keys(cps: tuple[int, ...], name: str) -> tuple[str, str | None]:
    """Two keys that identify an emoji's base concept; entries sharing either are one concept.

    Codepoints: drop skin tones, VS16, gender signs and hair components; man/woman -> person.
    Name: the part before ':' with gender words removed, when everything after ':' is modifiers."""
    core = []
    for i, c in enumerate(cps):
        if c in SKIN_TONES or c == VS16:
            continue
        if c in GENDER_SIGNS and i > 0 and cps[i - 1] == ZWJ:
            core.pop()  # the ZWJ before the sign
            continue
        if c in HAIR and i > 0 and cps[i - 1] == ZWJ:
            core.pop()
            continue
        core.append(PERSON.get(c, c) if len(cps) > 1 or c in PERSON else c)
    cp_key = "-".join(f"{c:x}" for c in core)
    head, _, tail = name.partition(":")
    name_key = None
    if not tail or all(w in _MODIFIER_WORDS for w in tail.replace(",", " ").split()):
        words = [w for w in head.split() if w not in _GENDER_WORDS]
        name_key = " ".join(words) or head
    return cp_key, name_key


def group_concepts(entries: list[EmojiEntry]) -> list[str]:
    """Union-find over both keys -> a concept id (its smallest codepoint key) per entry."""
    parent: dict[str, str] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    keys = [base_concept_keys(e.cps, e.name) for e in entries]
    for cp_key, name_key in keys:
        find("c:" + cp_key)
        if name_key:
            a, b = find("c:" + cp_key), find("n:" + name_key)
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = [find("c:" + k[0]) for k in keys]
    label = {}
    for (cp_key, _), r in zip(keys, roots):
        label[r] = min(label.get(r, cp_key), cp_key)
    return [label[r] for r in roots]


def modifiers(cps: tuple[int, ...]) -> tuple[list[str], list[str]]:
    """(skin tones, hair styles) named by the modifier codepoints of `cps`."""
    return [SKIN_TONES[c] for c in cps if c in SKIN_TONES], [HAIR[c] for c in cps if c in HAIR]


def compose_long(e: EmojiEntry, keywords: list[str], names: dict[str, str], aliases: list[str]) -> str:
    """The long caption: name, group and subgroup, skin tone, hair, keywords, aliases, names by language."""
    parts = [e.name[0].upper() + e.name[1:]]
    if e.group:
        parts[0] += f", an emoji of the group {e.group}, subgroup {e.subgroup}"
    tones, hair = modifiers(e.cps)
    if tones:
        parts.append(f"Skin tone: {' and '.join(dict.fromkeys(tones))}")
    if hair:
        parts.append(f"Hair: {', '.join(hair)}")
    kws = [k for k in keywords if k.lower() != e.name.lower()]
    if kws:
        parts.append("Keywords: " + ", ".join(kws))
    if aliases:
        parts.append("Also known as: " + ", ".join(aliases))
    if names:
        parts.append("In other languages: " + "; ".join(f"{n} ({lang})" for lang, n in names.items()))
    return ". ".join(parts) + "."
