"""Stage-1 caption triples: positives from the same image, negatives from another, seeded."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from synthetic_shards import jpeg

from llm2clip_nemo.data.pairs import CaptionPairDataset, CaptionRecord, PairConfig, make_triples, read_caption_records
from llm2clip_nemo.data.shards import ShardSample, write_shards


def _records(n=40):
    return [CaptionRecord(f"k{i}", (f"short {i}",), (f"long {i} a", f"long {i} b"), group=f"g{i % 4}") for i in range(n)]


def test_triples_pair_same_image_and_contrast_another():
    recs = _records()
    owner = {c: r.key for r in recs for c in r.short + r.long}
    cfg = PairConfig(seed=1, negative_group_field="group")
    triples = make_triples(recs, cfg)
    assert len(triples) == len(recs)
    for t in triples:
        assert owner[t.query] == owner[t.positive] == t.key
        assert owner[t.negative] == t.negative_key != t.key
        assert int(t.key[1:]) % 4 == int(t.negative_key[1:]) % 4  # same group: a hard negative
        side = t.direction.split("->")[1]
        assert (t.positive.startswith("long") and t.negative.startswith("long")) == (side == "long")
        assert t.query_text() == f"{cfg.instruction}: {t.query}"
    dirs = Counter(t.direction for t in triples)
    assert set(dirs) == {"short->long", "long->short"} and min(dirs.values()) >= 10
    assert make_triples(recs, cfg) == triples  # deterministic
    assert make_triples(recs, cfg, epoch=1) != triples


def test_single_side_samples_and_no_instruction():
    recs = [CaptionRecord("a", ("x1", "x2"), ()), CaptionRecord("b", ("y1", "y2"), ()), CaptionRecord("c", ("z",), ())]
    ts = make_triples(recs, PairConfig(instruction=None))
    assert [t.key for t in ts] == ["a", "b"]  # c has one caption: no positive pair
    assert all(t.direction == "short->short" and t.query != t.positive for t in ts)
    assert ts[0].query_text() == ts[0].query
    with pytest.raises(ValueError, match="at least 2 images"):
        make_triples(recs[:1], PairConfig())


def test_records_from_shards_and_dataset(tmp_path):
    samples = [ShardSample(f"{i:03d}", jpeg(i), "jpg", f"alt {i}", {"long": f"long {i}", "short_list": [f"s {i}"], "subgroup": "x"})
               for i in range(6)]
    write_shards(samples, str(tmp_path), samples_per_shard=4)
    recs = read_caption_records(str(tmp_path), PairConfig(negative_group_field="subgroup"))
    assert recs[2] == CaptionRecord("002", ("alt 2", "s 2"), ("long 2",), "x")
    ds = CaptionPairDataset(recs, PairConfig())
    assert len(ds) == 6
    first = [ds[i] for i in range(6)]
    ds.set_epoch(3)
    assert [ds[i] for i in range(6)] != first


def test_records_from_caption_only_tars(tmp_path):
    """Stage 1 reads captions only: a tar of txt/json without images yields its records (the one
    sample checker runs with require_image=False), and a member-level fault is still dropped."""
    import tarfile

    from llm2clip_nemo.data.tario import add_member

    with tarfile.open(tmp_path / "c-000000.tar", "w") as tf:
        add_member(tf, "a.txt", b"alt a")
        add_member(tf, "a.json", json.dumps({"long": "long a"}).encode())
        add_member(tf, "b.txt", b"\xff\xfe")  # not UTF-8: bad_text, and then no caption at all
        add_member(tf, "c.txt", b"alt c")
    recs = read_caption_records(str(tmp_path / "c-000000.tar"), PairConfig())
    assert recs == [CaptionRecord("a", ("alt a",), ("long a",), None), CaptionRecord("c", ("alt c",), (), None)]
