"""Embedding sidecars: storage precision, refusal of foreign sidecars, joining by key in the stream."""
from __future__ import annotations

import os
import tarfile

import pytest
import torch
from synthetic_shards import tiny_stream_config, write_synthetic_shards

from llm2clip_nemo.data.sidecar import SidecarMeta, SidecarMismatchError, SidecarReader, SidecarWriter, sidecar_path
from llm2clip_nemo.data.stream import ImageTextStream
from llm2clip_nemo.data.tario import iter_tar_samples

torch.set_num_threads(1)
FIELDS = ["txt", "long"]


def _vectors(key: str, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(key))
    return torch.randn(len(FIELDS), dim, generator=g) * 3 + 0.5


@pytest.mark.parametrize("dtype,min_cos,atol", [("int8", 0.999, None), ("fp16", 0.99999, 1e-2), ("bf16", 0.9999, 0.1)])
def test_round_trip_precision(tmp_path, dtype, min_cos, atol):
    path = str(tmp_path / "s.emb.tar")
    keys = [f"{i:06d}" for i in range(20)]
    with SidecarWriter(path, SidecarMeta("teacher-A", 576, FIELDS, dtype=dtype)) as w:
        for k in keys:
            w.write(k, _vectors(k, 576))
    r = SidecarReader(path, fingerprint="teacher-A", dim=576, fields=FIELDS)
    assert r.keys() == keys and r.meta.dtype == dtype
    for k in keys:
        got, want = r.get(k), _vectors(k, 576)
        assert got.shape == (2, 576) and got.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(got, want, dim=1).min() >= min_cos
        if atol:
            assert torch.allclose(got, want, atol=atol, rtol=1e-2)
    assert torch.equal(r.vector(keys[3], "long"), r.get(keys[3])[1])
    # Stored bytes per key: int8 = 2 fp32 scales + 2x576 bytes (~4x below fp32); fp16/bf16 = 2x576x2.
    with tarfile.open(path) as tf:
        sizes = {m.size for m in tf.getmembers() if m.name.endswith(".emb")}
    assert sizes == {{"int8": 2 * 4 + 2 * 576, "fp16": 2 * 576 * 2, "bf16": 2 * 576 * 2}[dtype]}


def test_foreign_sidecars_are_refused(tmp_path):
    path = str(tmp_path / "s.emb.tar")
    with SidecarWriter(path, SidecarMeta("llm-A:mean:v1", 64, FIELDS, pooling="mean", dtype="fp16")) as w:
        w.write("000001", torch.ones(2, 64))
    msg = (f"sidecar {path} has teacher fingerprint 'llm-A:mean:v1', expected 'llm-B:mean:v1': it holds another "
           f"teacher's embeddings; re-run `llm2clip-nemo extract` for these shards with the current teacher, or point "
           f"data.sidecar_dir at matching sidecars")
    with pytest.raises(SidecarMismatchError) as e:
        SidecarReader(path, fingerprint="llm-B:mean:v1")
    assert str(e.value) == msg
    with pytest.raises(SidecarMismatchError, match=r"has dim 64, expected 576"):
        SidecarReader(path, dim=576)
    with pytest.raises(SidecarMismatchError, match=r"missing \['short'\] needed by data.caption_fields"):
        SidecarReader(path, fields=["txt", "short"])
    with pytest.raises(SidecarMismatchError, match=r"has pooling 'mean', expected 'last'"):
        SidecarReader(path, pooling="last")


def test_writer_is_atomic(tmp_path):
    path = str(tmp_path / "s.emb.tar")
    with pytest.raises(ValueError, match=r"vectors have shape \(3, 8\), expected \(2, 8\)"):
        with SidecarWriter(path, SidecarMeta("t", 8, FIELDS)) as w:
            w.write("000001", torch.ones(2, 8))
            w.write("000002", torch.ones(3, 8))
    assert os.listdir(tmp_path) == []  # neither the sidecar nor its .tmp is left behind


def _write_sidecars(urls, fingerprint="teacher-A", dim=32, drop_key=None, sidecar_dir=None):
    for u in urls:
        keys = [s.key for s in iter_tar_samples(u, keys_only=True)]
        with SidecarWriter(sidecar_path(u, sidecar_dir), SidecarMeta(fingerprint, dim, FIELDS, dtype="int8",
                                                                     image_shard=os.path.basename(u))) as w:
            for k in keys:
                if k != drop_key:
                    w.write(k, _vectors(k, dim))


def test_stream_joins_embeddings_by_key(tmp_path):
    urls = write_synthetic_shards(str(tmp_path / "img"), n_shards=2, per_shard=6)
    _write_sidecars(urls, sidecar_dir=str(tmp_path / "emb"))
    cfg = tiny_stream_config(str(tmp_path / "img"), sidecar_dir=str(tmp_path / "emb"), resampled=False, epochs=1)
    n = 0
    for b in ImageTextStream(cfg, output="embeddings", teacher_fingerprint="teacher-A", teacher_dim=32):
        assert b["teacher_emb"].shape == (len(b["key"]), 32)
        for key, field, emb in zip(b["key"], b["caption_field"], b["teacher_emb"]):
            want = _vectors(key, 32)[FIELDS.index(field)]
            assert torch.nn.functional.cosine_similarity(emb, want, dim=0) > 0.999
            n += 1
    assert n == 12


def test_stream_refuses_mismatched_sidecars(tmp_path):
    urls = write_synthetic_shards(str(tmp_path), n_shards=1, per_shard=6)
    _write_sidecars(urls, drop_key="000003")
    cfg = tiny_stream_config(urls[0], resampled=False, epochs=1, shuffle_buffer=1, batch_size=1, open_shards=1)
    with pytest.raises(SidecarMismatchError, match=r"has no embedding for key '000003' of image shard 'shard-000000.tar'"):
        list(ImageTextStream(cfg, output="embeddings", teacher_fingerprint="teacher-A"))
    _write_sidecars(urls, fingerprint="teacher-B")
    with pytest.raises(SidecarMismatchError, match=r"fingerprint 'teacher-B', expected 'teacher-A'"):
        list(ImageTextStream(cfg, output="embeddings", teacher_fingerprint="teacher-A"))
