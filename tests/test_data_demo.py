"""The Twemoji demo dataset: real captions, a concept-disjoint split, idempotent builds."""
from __future__ import annotations

import io
import json
import os
import time

import pytest
from PIL import Image

from llm2clip_nemo.data.demo_dataset import CREDITS, EMOJI_TEST, build_demo_dataset
from llm2clip_nemo.data.emoji_meta import SKIN_TONES, EmojiEntry, base_concept_keys, group_concepts
from llm2clip_nemo.data.spec import parse_sources
from llm2clip_nemo.data.tario import iter_tar_samples

HAVE_DEBIAN = os.path.isfile(EMOJI_TEST)


def _read(urls):
    out = []
    for src in parse_sources(urls):
        for u in src.urls:
            out += [(s.key, s.members, json.loads(s.members["json"])) for s in iter_tar_samples(u)]
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("demo"))
    t = time.time()
    r = build_demo_dataset(d, install=False)
    return r, time.time() - t


def test_split_is_concept_disjoint_and_captions_are_real(demo):
    r, seconds = demo
    assert seconds < 60
    train, test = _read(r.train_urls), _read(r.test_urls)
    assert len(train) == r.n_train and len(test) == r.n_test and r.n_train + r.n_test > 3000
    assert 0.1 < r.n_test / (r.n_train + r.n_test) < 0.3
    concept = {sp: {m["base_concept"] for _, _, m in rows} for sp, rows in (("train", train), ("test", test))}
    assert not concept["train"] & concept["test"]
    # Independent of our concept ids: no emoji and its skin-tone-stripped form land on both sides.
    def stripped(m):
        return "".join(ch for ch in m["emoji"] if ord(ch) not in SKIN_TONES)
    assert not {stripped(m) for _, _, m in train} & {stripped(m) for _, _, m in test}
    assert not {m["short"].split(":")[0] for _, _, m in train if "skin tone" in m["short"]} & \
        {m["short"].split(":")[0] for _, _, m in test if "skin tone" in m["short"]}
    for _key, members, m in train[:300] + test[:100]:
        assert members["txt"].decode() == m["short"] and m["short"].strip() and m["long"].strip()
        if HAVE_DEBIAN:
            assert m["group"] and m["subgroup"] and m["group"] in m["long"] and m["subgroup"] in m["long"]
    img = Image.open(io.BytesIO(train[0][1]["png"]))
    assert img.size == (72, 72) and img.format == "PNG"
    toned = next(m for _, _, m in train + test if m["skin_tone"])
    assert "Skin tone: " + toned["skin_tone"][0] in toned["long"]
    if HAVE_DEBIAN:
        smile = next(m for _, _, m in train + test if m["emoji"] == "😀")
        assert smile["short"] == "grinning face" and smile["group"] == "Smileys & Emotion"
        assert smile["subgroup"] == "face-smiling" and "grin" in smile["keywords"] and smile["names"].get("fr")
    assert "CC-BY 4.0" in CREDITS and "Unicode" in CREDITS
    assert open(os.path.join(r.out_dir, "CREDITS.txt")).read().strip() == CREDITS


def test_rebuild_is_idempotent_and_fast(demo):
    r, _ = demo
    before = {n: os.stat(os.path.join(r.out_dir, "train", n)).st_mtime_ns for n in os.listdir(os.path.join(r.out_dir, "train"))}
    t = time.time()
    again = build_demo_dataset(r.out_dir, install=False)
    assert time.time() - t < 1.0 and again == r
    after = {n: os.stat(os.path.join(r.out_dir, "train", n)).st_mtime_ns for n in before}
    assert after == before


def test_base_concepts_merge_modifier_variants_only():
    same = [((0x1F44B,), "waving hand"), ((0x1F44B, 0x1F3FD), "waving hand: medium skin tone")]
    techs = [((0x1F468, 0x200D, 0x1F4BB), "man technologist"), ((0x1F469, 0x1F3FB, 0x200D, 0x1F4BB), "woman technologist: light skin tone"),
             ((0x1F9D1, 0x200D, 0x1F4BB), "technologist")]
    facepalm = [((0x1F926,), "person facepalming"), ((0x1F926, 0x200D, 0x2642, 0xFE0F), "man facepalming")]
    flags = [((0x1F1FA, 0x1F1F8), "flag: United States"), ((0x1F1EB, 0x1F1F7), "flag: France")]
    entries = [EmojiEntry(cps, name) for cps, name in same + techs + facepalm + flags]
    c = group_concepts(entries)
    assert c[0] == c[1] and c[2] == c[3] == c[4] and c[5] == c[6]
    assert len({c[0], c[2], c[5], c[7], c[8]}) == 5  # flags stay distinct concepts
    assert base_concept_keys((0x1F44B, 0x1F3FD), "waving hand: medium skin tone") == ("1f44b", "waving hand")


def test_degrades_without_debian_sources(tmp_path):
    r = build_demo_dataset(str(tmp_path), install=False, emoji_test=str(tmp_path / "none.txt"),
                           cldr_dir=str(tmp_path / "none"), limit=60, samples_per_shard=50)
    assert any("unicode-data" in w and "group" in w for w in r.warnings)
    assert any("unicode-cldr-core" in w for w in r.warnings)
    rows = _read(r.train_urls) + _read(r.test_urls)
    assert len(rows) >= 40
    for _, _, m in rows:
        assert m["short"] and m["long"].startswith(m["short"][0].upper()) and m["group"] is None
    assert sum(bool(m["names"].get("fr")) for _, _, m in rows) > len(rows) // 2  # names from the emoji package


def test_cli_demo_reports_the_built_dataset(demo, capsys):
    from llm2clip_nemo.data.cli import main

    r, _ = demo
    assert main(["demo", "--out", r.out_dir, "--no-install"]) == 0
    out = capsys.readouterr().out
    assert f"{r.n_train} train / {r.n_test} test images" in out and r.train_urls in out and "CC-BY 4.0" in out
