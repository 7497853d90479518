"""Shard writer: deterministic bytes, atomic shards, resuming a partial build; the data CLI."""
from __future__ import annotations

import csv
import hashlib
import json
import os

import pytest
from synthetic_shards import jpeg

from llm2clip_nemo.data.cli import inspect_shards, main
from llm2clip_nemo.data.shards import ShardSample, write_shards
from llm2clip_nemo.data.spec import DataSourceError
from llm2clip_nemo.data.tario import iter_tar_samples


def _samples(n, reads=None):
    def img(i):
        def read():
            if reads is not None:
                reads.append(i)
            return jpeg(i)
        return read
    return [ShardSample(f"{i:05d}", img(i), "jpeg", f"cap {i}", {"long": f"long {i}", "short_list": ["a", str(i)]})
            for i in range(n)]


def _digest(d):
    return {n: hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest() for n in sorted(os.listdir(d))}


def test_deterministic_and_resumes_partial_build(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    man = write_shards(_samples(25), a, samples_per_shard=10)
    assert [s["count"] for s in man["shards"]] == [10, 10, 5] and man["total"] == 25
    assert json.load(open(os.path.join(a, "sizes.json"))) == {"shard-000000.tar": 10, "shard-000001.tar": 10, "shard-000002.tar": 5}
    write_shards(_samples(25), b, samples_per_shard=10)
    assert _digest(a) == _digest(b)  # byte-identical builds
    # Simulate a build killed while writing shard 2: shard 2 only as a .tmp, no manifest yet.
    os.rename(os.path.join(b, "shard-000002.tar"), os.path.join(b, "shard-000002.tar.tmp"))
    os.remove(os.path.join(b, "manifest.json"))
    before = os.stat(os.path.join(b, "shard-000000.tar")).st_mtime_ns
    reads = []
    man = write_shards(_samples(25, reads), b, samples_per_shard=10)
    assert man["resumed_shards"] == 2 and sorted(reads) == list(range(20, 25))  # only shard 2's images were read
    assert os.stat(os.path.join(b, "shard-000000.tar")).st_mtime_ns == before
    assert _digest(a) == _digest(b)
    s = next(iter_tar_samples(os.path.join(a, "shard-000001.tar")))
    assert s.key == "00010" and set(s.members) == {"jpg", "txt", "json"}
    assert json.loads(s.members["json"]) == {"long": "long 10", "short_list": ["a", "10"]}


def test_resume_refuses_a_shard_from_another_input(tmp_path):
    write_shards(_samples(20), str(tmp_path), samples_per_shard=10)
    other = [ShardSample(f"x{i}", jpeg(i), "jpg", "c") for i in range(20)]
    with pytest.raises(DataSourceError, match=r"shard-000000.tar exists but holds other samples .* from another build"):
        write_shards(other, str(tmp_path), samples_per_shard=10)


def test_cli_build_from_folder_jsonl_and_csv_then_inspect(tmp_path, capsys):
    img = tmp_path / "imgs"
    img.mkdir()
    for i in range(5):
        (img / f"p{i}.jpg").write_bytes(jpeg(i))
    (img / "p2.jpg").write_bytes(b"corrupt bytes")
    rows = [{"image": f"p{i}.jpg", "caption": f"alt {i}", "long": f"a long one {i}"} for i in range(5)]
    rows.append({"image": "missing.jpg", "caption": "gone"})
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["build", "--images", str(img), "--captions", str(tmp_path / "caps.jsonl"), "--out", str(tmp_path / "o1"),
                 "--samples-per-shard", "2"]) == 0
    # build checks every sample with the stream's checker: the corrupt image is skipped and counted there
    # (it used to be written into the shards and found only by the training stream)
    assert "wrote 4 samples in 2 shards" in (out := capsys.readouterr().out)
    assert "skipped: {'corrupt_image': 1, 'missing_image': 1}" in out
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "caption", "short_list"])
        w.writeheader()
        for i in range(5):
            w.writerow({"image": f"p{i}.jpg", "caption": f"alt {i}", "short_list": json.dumps([f"s{i}", "t"])})
    assert main(["build", "--images", str(img), "--captions", str(tmp_path / "caps.csv"), "--out", str(tmp_path / "o2")]) == 0
    s = next(iter_tar_samples(str(tmp_path / "o2" / "shard-000000.tar")))
    assert s.members["txt"] == b"alt 0" and json.loads(s.members["json"])["short_list"] == ["s0", "t"]
    t = inspect_shards(str(tmp_path / "o1"), decode=True)
    assert t["samples"] == 4 and t["valid"] == 4 and t["problems"] == {}
    assert t["json_fields"] == {"long": 4, "source_path": 4}
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "nowhere-{0..1}.tar")]) == 2
    assert "does not exist or is not readable" in capsys.readouterr().err


def test_cli_reshards_img2dataset_output(tmp_path, capsys):
    src = tmp_path / "i2d" / "00000"
    src.mkdir(parents=True)
    for i in range(4):
        stem = src / f"00000000{i}"
        stem.with_suffix(".jpg").write_bytes(jpeg(i))
        stem.with_suffix(".txt").write_text(f"alt {i}")
        stem.with_suffix(".json").write_text(json.dumps({"status": "success" if i != 1 else "failed_to_download"}))
    assert main(["build", "--img2dataset", str(tmp_path / "i2d"), "--out", str(tmp_path / "o")]) == 0
    assert "wrote 3 samples" in capsys.readouterr().out
    keys = [s.key for s in iter_tar_samples(str(tmp_path / "o" / "shard-000000.tar"))]
    assert keys == ["000000000", "000000002", "000000003"]
