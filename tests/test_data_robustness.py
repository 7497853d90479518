"""Planted faults in a real tar: each is skipped and counted by reason; no pickle is ever loaded."""
from __future__ import annotations

import logging
import os
import pickle
import random
import tarfile

import pytest
import torch
from synthetic_shards import jpeg, tiny_stream_config

from llm2clip_nemo.data.samples import decode_member
from llm2clip_nemo.data.shards import ShardSample, write_shards
from llm2clip_nemo.data.stream import ImageTextStream
from llm2clip_nemo.data.tario import add_member, iter_tar_samples

torch.set_num_threads(1)


class _TouchOnLoad:
    """Unpickling this creates a file: the proof that nobody unpickled it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


N_GOOD, N_CORRUPT = 9, 3


def _planted_shard(d, marker: str) -> str:
    path = os.path.join(d, "bad-000000.tar")
    with tarfile.open(path, "w") as tf:
        k = 0
        for i in range(N_GOOD):
            add_member(tf, f"{k:04d}.jpg", jpeg(i))
            add_member(tf, f"{k:04d}.txt", f"good {i}".encode())
            k += 1
        # a JPEG start marker then fixed garbage (seeded: about 1 in 6 random tails parse as a JPEG that
        # runs out of data, i.e. truncated_image; this one is corrupt_image)
        garbage = b"\xff\xd8\xff" + random.Random(1).randbytes(200)
        for i, bad in enumerate([b"not an image at all", jpeg(1)[:60], garbage][:N_CORRUPT]):
            add_member(tf, f"{k:04d}.jpg", bad)
            add_member(tf, f"{k:04d}.txt", f"corrupt {i}".encode())
            k += 1
        add_member(tf, f"{k:04d}.jpg", jpeg(5))  # no .txt and no .json: missing caption
        k += 1
        add_member(tf, f"{k:04d}.jpg", jpeg(6))  # a good sample carrying a pickle member
        add_member(tf, f"{k:04d}.txt", b"with pickle")
        add_member(tf, f"{k:04d}.pyd", pickle.dumps(_TouchOnLoad(marker)))
        k += 1
        add_member(tf, f"{k:04d}.jpg", jpeg(7, size=(300, 300)))  # the truncated tail cuts this one
        add_member(tf, f"{k:04d}.txt", b"truncated")
    data = open(path, "rb").read()
    last = data.rfind(b"truncated")
    with open(path, "wb") as f:  # cut inside the last jpg's data: drop its txt and the end blocks
        f.write(data[: last - 1200])
    return path


def test_planted_faults_are_counted_exactly_and_pickle_never_loaded(tmp_path, caplog):
    marker = str(tmp_path / "UNPICKLED")
    live = str(tmp_path / "payload_is_live")
    pickle.loads(pickle.dumps(_TouchOnLoad(live)))  # the payload does act when unpickled...
    assert os.path.exists(live)
    path = _planted_shard(str(tmp_path), marker)
    cfg = tiny_stream_config(path, resampled=False, epochs=1, batch_size=2, caption_fields={"txt": 1.0},
                             log_first=1, open_shards=1)
    s = ImageTextStream(cfg)
    with caplog.at_level(logging.WARNING, logger="llm2clip_nemo.data"):
        keys = [k for b in s for k in b["key"]]
    summ = s.summary()
    # the 60-byte JPEG prefix is a truncated image, the other two are not images at all
    assert summ["skipped"] == {"corrupt_image": N_CORRUPT - 1, "missing_caption": 1, "pickle_member": 1,
                               "truncated_image": 1, "truncated_tar": 1}
    assert summ["valid"] == [N_GOOD + 1] and len(keys) == N_GOOD + 1
    assert not os.path.exists(marker)  # ...but the stream never unpickled it
    assert ("skipped: {'corrupt_image': 2, 'missing_caption': 1, 'pickle_member': 1, 'truncated_image': 1, "
            "'truncated_tar': 1}") in s.summary_text()
    # Bounded logging: log_first=1 -> one line per reason, not one per skip.
    lines = [r.getMessage() for r in caplog.records if "skipped sample (corrupt_image)" in r.getMessage()]
    assert len(lines) == 1 and "further skips of this kind are only counted" in lines[0]


def test_decode_whitelist_refuses_pickles(tmp_path):
    marker = str(tmp_path / "UNPICKLED")
    payload = pickle.dumps(_TouchOnLoad(marker))
    for ext in ("pyd", "pickle", "pkl", "x.pyd"):
        assert decode_member(ext, payload) is None
    assert not os.path.exists(marker)
    import io

    import numpy as np
    buf = io.BytesIO()
    np.save(buf, np.arange(4))
    assert decode_member("npy", buf.getvalue()).tolist() == [0, 1, 2, 3]
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        decode_member("npy", obj.getvalue())
    assert decode_member("json", b'{"long": "x"}') == {"long": "x"}


def test_truncation_at_member_boundary_is_detected(tmp_path):
    samples = [ShardSample(f"{i:03d}", jpeg(i), "jpg", f"c{i}") for i in range(3)]
    write_shards(samples, str(tmp_path), samples_per_shard=3)
    p = str(tmp_path / "shard-000000.tar")
    with tarfile.open(p) as tf:
        end_of_second = next(m for m in tf.getmembers() if m.name == "001.txt").offset_data + 512
    data = open(p, "rb").read()
    open(p, "wb").write(data[:end_of_second])  # exactly after sample 001: no end-of-archive blocks
    items = list(iter_tar_samples(p))
    # Sample 001 may have lost later members with the tail, so it goes with the truncation.
    assert [i.key for i in items if i.error is None] == ["000"]
    assert [i.error for i in items if i.error] == ["truncated_tar"]
    # Skipping ahead (resume) lands on the same item numbering.
    assert [(i.index, i.error) for i in iter_tar_samples(p, start=1)] == [(1, "truncated_tar")]
