"""Extraction recipe: TP parity of sidecars, kill-and-rerun idempotence, skipping finished shards."""
from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from clip_fixtures import make_shards
from dist_utils import run_workers
from llm_fixtures import CAPTIONS, random_word_captions, write_tiny_llama

from llm2clip_nemo.config import load_config
from llm2clip_nemo.data.sidecar import SidecarReader
from llm2clip_nemo.recipes.extract import ExtractConfig, run


def cfg_for(shards, teacher, sidecar_dir, **kw):
    over = [f"data.urls={shards}", f"teacher.path={teacher}", f"data.sidecar_dir={sidecar_dir}", "progress=false"]
    over += [f"{k}={v}" for k, v in kw.items()]
    return load_config(ExtractConfig, None, over)


def _extract_worker(rank, world, over):
    return run(load_config(ExtractConfig, None, over))


def test_sidecars_tp3_equal_tp1_on_smollm2(smollm2_tp3, tmp_path):
    longs = list(reversed(CAPTIONS[:12]))
    longs[3] = None
    shards = make_shards(tmp_path / "shards", CAPTIONS[:12], longs, per_shard=4)
    r1 = run(cfg_for(shards, smollm2_tp3, tmp_path / "tp1", **{"teacher.tensor_parallel": 1}))
    assert (r1["shards_done"], r1["captions"], r1["missing_captions"]) == (3, 23, 1)
    over = [f"data.urls={shards}", f"teacher.path={smollm2_tp3}", f"data.sidecar_dir={tmp_path / 'tp3'}",
            "progress=false", "teacher.tensor_parallel=3"]
    r3 = run_workers(_extract_worker, 3, over)[0]
    assert r3["shards_done"] == 3 and r3["captions"] == 23
    for name in sorted(os.listdir(tmp_path / "tp1")):
        a, b = SidecarReader(str(tmp_path / "tp1" / name)), SidecarReader(str(tmp_path / "tp3" / name))
        assert a.keys() == b.keys() and a.meta.fingerprint == b.meta.fingerprint
        for k in a.keys():
            va, vb = a.get(k), b.get(k)
            present = va.abs().sum(1) > 0
            assert torch.equal(present, vb.abs().sum(1) > 0)
            assert F.cosine_similarity(va[present], vb[present]).min().item() >= 0.9999


@pytest.fixture
def tiny_setup(tmp_path):
    teacher = write_tiny_llama(tmp_path / "tiny")
    caps = random_word_captions(64, seed=1)
    shards = make_shards(tmp_path / "shards", caps[:32], caps[32:], per_shard=4)  # 8 shards
    return teacher, shards


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_killed_run_rerun_equals_clean_run(tiny_setup, tmp_path, dtype):
    teacher, shards = tiny_setup
    clean = run(cfg_for(shards, teacher, tmp_path / "clean", **{"data.storage_dtype": dtype}))
    assert clean["shards_done"] == 8
    # a real SIGKILL of a running extract, as soon as its first sidecar lands
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "llm2clip_nemo.cli", "extract", f"data.urls={shards}", f"teacher.path={teacher}",
           f"data.sidecar_dir={out}", f"data.storage_dtype={dtype}", "progress=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and any(n.endswith(".emb.tar") for n in os.listdir(out))):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(n for n in os.listdir(out) if n.endswith(".emb.tar"))
    assert finished, "the extract subprocess wrote nothing before the deadline"
    rerun = run(cfg_for(shards, teacher, out, **{"data.storage_dtype": dtype}))
    # only the unfinished shards were redone
    assert rerun["shards_skipped"] == len(finished) and rerun["shards_done"] == 8 - len(finished)
    names = sorted(n for n in os.listdir(out) if not n.endswith(".tmp"))
    assert names == sorted(os.listdir(tmp_path / "clean"))
    match, mismatch, errors = filecmp.cmpfiles(out, tmp_path / "clean", names, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == 8
    # a third run does nothing
    again = run(cfg_for(shards, teacher, out, **{"data.storage_dtype": dtype}))
    assert (again["shards_done"], again["shards_skipped"]) == (0, 8)


def test_other_teacher_settings_recompute_stale_sidecars(tiny_setup, tmp_path):
    teacher, shards = tiny_setup
    out = tmp_path / "sc"
    run(cfg_for(shards, teacher, out))
    r = run(cfg_for(shards, teacher, out, **{"teacher.pooling": "last_token"}))  # another fingerprint
    assert r["shards_done"] == 8 and r["shards_skipped"] == 0
    assert SidecarReader(str(out / "shard-000000.emb.tar")).meta.pooling == "last_token"


def test_summary_projection(tiny_setup, tmp_path):
    teacher, shards = tiny_setup
    r = run(cfg_for(shards, teacher, tmp_path / "p", **{"projection.samples": 2e9, "data.storage_dtype": "int8"}))
    # 2 fields x 2e9 samples x (64-d int8 + 4-byte scale) = 0.272 TB
    assert r["projection"]["storage_tb"] == pytest.approx(2 * 2e9 * (64 + 4) / 1e12)
    assert r["captions_per_s"] > 0 and r["projection"]["hours_at_measured_rate"] > 0


def test_missing_urls_is_a_config_error():
    from llm2clip_nemo.config import ConfigError

    with pytest.raises(ConfigError, match="data.urls is empty: give the image-text shards"):
        load_config(ExtractConfig, None, [])
