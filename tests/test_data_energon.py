"""Energon-prepared datasets and metadatasets as sources: split parts, excludes, field maps, refusals."""
from __future__ import annotations

import json
import os
import tarfile
from collections import Counter

import pytest
import torch
import yaml
from synthetic_shards import jpeg
from synthetic_shards import tiny_stream_config as stream_cfg
from synthetic_shards import write_synthetic_shards as make_shards

from llm2clip_nemo.data.cli import inspect_shards
from llm2clip_nemo.data.cli import main as data_main
from llm2clip_nemo.data.energon import EnergonUnsupported
from llm2clip_nemo.data.pairs import PairConfig, read_caption_records
from llm2clip_nemo.data.spec import DataSourceError, parse_sources
from llm2clip_nemo.data.stream import ImageTextStream
from llm2clip_nemo.data.tario import add_member

torch.set_num_threads(1)

EXCLUDED = ("000012", "000017")  # two samples of shard 1


def write_energon(root: str, n_shards: int = 6, per_shard: int = 10, tag: str = "", exclude=None,
                  field_map=None, parts=None) -> str:
    """An energon-prepared dataset as `energon prepare` lays it out (published .nv-meta format)."""
    urls = make_shards(os.path.join(root, "shards"), n_shards=n_shards, per_shard=per_shard, tag=tag)
    names = [f"shards/{os.path.basename(u)}" for u in urls]
    for u in urls:  # energon's sample index beside each tar: must be ignored
        with open(u + ".idx", "wb") as f:
            f.write(b"\x00" * 16)
    meta = os.path.join(root, ".nv-meta")
    os.makedirs(meta)
    with open(os.path.join(meta, "dataset.yaml"), "w") as f:
        yaml.safe_dump({"sample_type": {"__module__": "megatron.energon", "__class__": "CaptioningSample"},
                        "field_map": field_map or {"image": "jpg", "caption": "txt"}}, f)
    split = {"exclude": list(exclude or []),
             "split_parts": parts or {"train": names[:-1], "val": names[-1:]}}
    with open(os.path.join(meta, "split.yaml"), "w") as f:
        yaml.safe_dump(split, f)
    with open(os.path.join(meta, ".info.yaml"), "w") as f:
        yaml.safe_dump({"shard_counts": {n: per_shard for n in names}}, f)
    return root


@pytest.fixture(scope="module")
def energon_dir(tmp_path_factory):
    # train = parts 0..4; part 4 excluded whole, two samples of part 1 excluded; val = part 5
    root = str(tmp_path_factory.mktemp("ds"))
    return write_energon(root, exclude=["shards/shard-000004.tar", *(f"shards/shard-000001.tar/{k}" for k in EXCLUDED)])


def _keys(loader, n_batches=None):
    out = []
    for i, b in enumerate(loader):
        out += b["key"]
        if n_batches is not None and i + 1 == n_batches:
            break
    return out


def test_split_parts_and_excludes_resolve_to_sources(energon_dir):
    (src,) = parse_sources(energon_dir)
    assert src.spec == f"{energon_dir}#train" and src.weight is None
    assert src.urls == tuple(f"{energon_dir}/shards/shard-{i:06d}.tar" for i in range(4))  # part 4 excluded
    assert src.exclude == {f"{energon_dir}/shards/shard-000001.tar": frozenset(EXCLUDED)}
    (val,) = parse_sources(f"{energon_dir}#val")
    assert val.urls == (f"{energon_dir}/shards/shard-000005.tar",)
    with pytest.raises(DataSourceError, match=r"has no split 'test'; choose one of \['train', 'val'\]"):
        parse_sources(f"{energon_dir}#test")
    # the other readers go through the same Source: `data inspect` and stage 1's caption pairs
    t = inspect_shards(energon_dir)
    assert (t["samples"], t["valid"], t["problems"]) == (38, 38, {"excluded": 2})
    recs = read_caption_records(energon_dir, PairConfig())
    assert len(recs) == 38 and not {r.key for r in recs} & set(EXCLUDED)


def test_energon_epoch_equals_plain_parts_minus_excluded_and_resumes(energon_dir):
    plain = f"{energon_dir}/shards/shard-{{000000..000003}}.tar"
    cfg = dict(resampled=False, epochs=1, batch_size=3)
    # in one process: the same samples in the same order (same seed, same parts), the excluded left out
    want = [k for k in _keys(ImageTextStream(stream_cfg(plain, **cfg))) if k not in EXCLUDED]
    assert _keys(ImageTextStream(stream_cfg(energon_dir, **cfg))) == want and len(want) == 38
    # two workers: each sample once per epoch
    full = _keys(ImageTextStream(stream_cfg(energon_dir, **cfg)).loader(num_workers=2))
    assert sorted(full) == sorted(want) and len(set(full)) == 38
    first = ImageTextStream(stream_cfg(energon_dir, **cfg))
    before = _keys(first.loader(num_workers=2), 5)
    state = json.loads(json.dumps(first.state_dict()))
    second = ImageTextStream(stream_cfg(energon_dir, **cfg))
    second.load_state_dict(state)
    assert before + _keys(second.loader(num_workers=2)) == full
    assert second.summary()["skipped"] == {"excluded": 2}


def test_field_map_names_image_and_caption_members(tmp_path):
    root = tmp_path / "fm"
    (root / "parts").mkdir(parents=True)
    with tarfile.open(root / "parts" / "a.tar", "w") as tf:
        for i in range(4):  # the alt text `.txt` is not the mapped caption; `.image` has no image extension
            add_member(tf, f"k{i}.image", jpeg(i))
            add_member(tf, f"k{i}.txt", b"not this one")
            add_member(tf, f"k{i}.caption.txt", f"mapped caption {i}".encode())
    (root / ".nv-meta").mkdir()
    (root / ".nv-meta" / "dataset.yaml").write_text(yaml.safe_dump({
        "sample_type": {"__module__": "megatron.energon", "__class__": "CaptioningSample"},
        "field_map": {"image": "image", "caption": "caption.txt"}}))
    (root / ".nv-meta" / "split.yaml").write_text(yaml.safe_dump({"split_parts": {"train": ["parts/a.tar"]}}))
    s = ImageTextStream(stream_cfg(str(root), resampled=False, epochs=1, caption_fields={"txt": 1.0}))
    batch = next(iter(s))
    assert sorted(batch["caption"]) == [f"mapped caption {i}" for i in range(4)]
    assert batch["image"].shape == (4, 3, 16, 16)


def _metadataset(path, splits: dict) -> str:
    with open(path, "w") as f:
        yaml.safe_dump({"__module__": "megatron.energon", "__class__": "MetadatasetV2", "splits": splits}, f)
    return str(path)


def test_metadataset_blend_weights_are_sample_shares_and_nest(energon_dir, tmp_path):
    write_energon(str(tmp_path / "other"), n_shards=2, per_shard=4, tag="o")
    _metadataset(tmp_path / "inner.yaml", {"train": {"blend": [
        {"weight": 1, "path": os.path.relpath(energon_dir, tmp_path)}, {"weight": 1, "path": "./other", "split_part": "val"}]}})
    outer = _metadataset(tmp_path / "outer.yaml", {"train": {"blend": [
        {"weight": 3, "path": "inner.yaml"}, {"weight": 1, "path": "./other"}]}})
    got = [(s.spec.rsplit("/", 1)[-1], s.weight, len(s.urls)) for s in parse_sources(outer)]
    assert got == [(f"{os.path.basename(energon_dir)}#train", 0.375, 4), ("other#val", 0.375, 1), ("other#train", 0.25, 1)]
    # beside a plain source, by data.weights: the metadataset's part weighs 1 of 2
    ws = [s.weight for s in parse_sources(f"{outer}::{energon_dir}#val", weights="1::1")]
    assert ws == [0.1875, 0.1875, 0.125, 0.5]
    with pytest.raises(DataSourceError, match=r"holds an energon blend .* give data.weights instead"):
        parse_sources(outer, upsampling_factors="1")


@pytest.mark.parametrize("node, named", [
    ({"join": [{"path": "./a"}, {"path": "./b"}]}, r"splits.train: 'join' is not supported by llm2clip_nemo; joining datasets sample by sample"),
    ({"blend_epochized": [{"repetitions": 2, "path": "./a"}]}, r"'blend_epochized' is not supported"),
    ({"path": "DS", "subflavors": {"augmentation_type": "small"}}, r"splits.train: subflavors is not supported"),
])
def test_unmapped_metadataset_construct_is_one_line_exit_2(energon_dir, tmp_path, capsys, node, named):
    if node.get("path") == "DS":
        node = {**node, "path": energon_dir}
    meta = _metadataset(tmp_path / "m.yaml", {"train": node})
    with pytest.raises(EnergonUnsupported, match=named):
        parse_sources(meta)
    assert data_main(["inspect", meta]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llm2clip-nemo data inspect: ") and "Traceback" not in err
    assert "m.yaml" in err


def test_unmapped_dataset_yaml_is_refused_by_name(tmp_path):
    root = write_energon(str(tmp_path / "vqa"), n_shards=1, per_shard=2, parts={"train": ["shards/shard-000000.tar"]})
    with open(os.path.join(root, ".nv-meta", "dataset.yaml"), "w") as f:
        yaml.safe_dump({"sample_type": {"__module__": "megatron.energon", "__class__": "VQASample"},
                        "field_map": {"image": "jpg", "context": "txt", "answers": "json"}}, f)
    with pytest.raises(EnergonUnsupported, match=r"sample_type 'VQASample' is not supported by llm2clip_nemo; use one of "
                                                 r"\['CaptioningSample'\]"):
        parse_sources(root)
    with open(os.path.join(root, ".nv-meta", "dataset.yaml"), "w") as f:
        yaml.safe_dump({"__module__": "megatron.energon", "__class__": "CrudeWebdataset"}, f)
    with pytest.raises(EnergonUnsupported, match=r"__class__: CrudeWebdataset \(a crude or custom dataset\)"):
        parse_sources(root)


def _share_run(urls, seed, n=2000, **kw):
    s = ImageTextStream(stream_cfg(urls, weights="1::3", seed=seed, batch_size=50, **kw))
    keys = []
    for b in s:
        keys += b["key"]
        if len(keys) >= n:
            break
    return keys[:n], s.summary()


@pytest.fixture(scope="module")
def big_small(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    make_shards(str(d / "a"), n_shards=2, per_shard=320, tag="a")
    make_shards(str(d / "b"), n_shards=2, per_shard=80, tag="b")
    return f"{d}/a/shard-{{000000..000001}}.tar::{d}/b/shard-{{000000..000001}}.tar"


def test_weights_are_sample_shares_whatever_the_shard_sizes(big_small):
    seqs = {}
    for seed in (0, 1, 2):
        keys, summ = _share_run(big_small, seed)
        share_b = sum(k.startswith("b") for k in keys) / len(keys)
        assert abs(share_b - 0.75) <= 0.02, (seed, share_b)
        assert summ["target"] == [0.25, 0.75] and summ["share"][1] == summ["valid"][1] / sum(summ["valid"])
        seqs[seed] = keys
    assert _share_run(big_small, 0, n=500)[0] == seqs[0][:500]  # same seed, same sequence
    assert seqs[0][:500] != seqs[1][:500]


@pytest.mark.parametrize("resampled", [True, False])
def test_weights_resume_exactly(tmp_path, resampled):
    make_shards(str(tmp_path / "a"), n_shards=4, per_shard=12, tag="a")
    make_shards(str(tmp_path / "b"), n_shards=4, per_shard=3, tag="b")
    urls = f"{tmp_path}/a/shard-{{000000..000003}}.tar::{tmp_path}/b/shard-{{000000..000003}}.tar"
    cfg = dict(weights="1::3", resampled=resampled, epochs=None if resampled else 2)
    n = 30 if resampled else None
    full = _keys(ImageTextStream(stream_cfg(urls, **cfg)).loader(num_workers=2), n)
    if not resampled:  # the stream ends when source b completes its 2nd pass: each b sample exactly twice
        assert Counter(k for k in full if k.startswith("b")) == {f"b{i:06d}": 2 for i in range(12)}
        assert len(full) == len(set(full) - {f"b{i:06d}" for i in range(12)}) + 24
    first = ImageTextStream(stream_cfg(urls, **cfg))
    before = _keys(first.loader(num_workers=2), 7)
    second = ImageTextStream(stream_cfg(urls, **cfg))
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert before + _keys(second.loader(num_workers=2), None if n is None else n - 7) == full


def test_blend_false_concatenates_a_metadataset_once_per_epoch(energon_dir, tmp_path):
    write_energon(str(tmp_path / "other"), n_shards=2, per_shard=4, tag="o")
    meta = _metadataset(tmp_path / "mix.yaml", {"train": {"blend": [
        {"weight": 9, "path": energon_dir}, {"weight": 1, "path": "./other"}]}})
    s = ImageTextStream(stream_cfg(meta, resampled=False, epochs=1, blend=False))
    assert s.weights is None
    got = _keys(s)  # energon's val mode: every sample of every dataset once, weights ignored
    assert sorted(got) == sorted([f"{i:06d}" for i in range(40) if f"{i:06d}" not in EXCLUDED] + ["o000000", "o000001",
                                                                                                     "o000002", "o000003"])


def test_version_1_state_resumes_exactly(tmp_path):
    make_shards(str(tmp_path), n_shards=4, per_shard=6)
    cfg = stream_cfg(f"{tmp_path}/shard-{{000000..000003}}.tar", resampled=False, epochs=2)
    full = _keys(ImageTextStream(cfg))
    first = ImageTextStream(cfg)
    before = _keys(first, 5)
    st = json.loads(json.dumps(first.state_dict()))
    # the layout version 1 wrote (one rank's workers, one pool, no mixing keys)
    st["positions"], st["stats"] = st["positions"]["0"], st["stats"]["0"]
    del st["slots"], st["hosted"]
    for w, p in st["positions"].items():
        (pool,) = p.pop("pools")
        st["positions"][w] = {"epoch": p["epoch"], "next": pool["next"], "open": pool["open"],
                              "window": p["window"], "done": p["done"]}
    del st["weights"], st["upsampling_factors"]
    st["version"] = 1
    second = ImageTextStream(cfg)
    second.load_state_dict(st)
    assert before + _keys(second) == full and len(full) == 48


def test_extract_keeps_excluded_keys_as_empty_records(energon_dir):
    from llm2clip_nemo.data.tario import count_samples
    from llm2clip_nemo.recipes.extract import read_shard_captions

    (src,) = parse_sources(energon_dir)
    shard = src.urls[1]
    keys, caps, problems = read_shard_captions(shard, ["txt"], check_images=False, source=src)
    # one sidecar record per shard sample (so a finished sidecar is recognised), none embedded for the excluded
    assert len(keys) == count_samples(shard) == 10 and problems == {"excluded": 2}
    assert [k for k, c in zip(keys, caps) if c is None] == list(EXCLUDED)
    assert caps[0] == ["alt 10"]


def test_one_mixing_rule_per_run():
    from llm2clip_nemo.config.loader import ConfigError
    from llm2clip_nemo.data.config import StreamConfig

    with pytest.raises(ConfigError, match=r"^data.weights='1::3' and data.upsampling_factors='1::1' are both set; choose one "
                                          r"mixing rule: weights \(sample shares\) or upsampling_factors \(open_clip, per shard\)$"):
        StreamConfig(urls="a::b", weights="1::3", upsampling_factors="1::1").validate()


def test_evaluate_reads_an_energon_split_through_the_same_source(energon_dir):
    """`evaluate --data DIR#split` honours the dataset's excludes like the stream: the excluded samples
    are never read, counted as `excluded`, and are not a fault under --strict."""
    from llm2clip_nemo.eval import load_shard_data

    for strict in (False, True):
        es = load_shard_data(energon_dir, strict=strict, long_field=None).set
        assert len(es.keys) == 38 and not set(es.keys) & set(EXCLUDED)
        assert es.reason_counts() == {"excluded": 2}
    with pytest.raises(DataSourceError, match="has no split 'test'"):
        load_shard_data(f"{energon_dir}#test")
