"""Golden per-step losses: `pretrain_tiny` offline, `pretrain_tiny` online with the teacher at TP=2
(2 gloo ranks under torchrun), and `caption_contrastive_tiny`, each on the tiny fixtures the other
training tests use, compared with the files in tests/golden/.

These are the safety net of refactors that must not change the numbers (issue 15): the same
seeds, data and config give the same loss at every step. A change that moves a golden value
must say why in its commit message; rewrite the files with

    LLM2CLIP_UPDATE_GOLDEN=1 python -m pytest -q tests/test_golden.py

Tolerance: relative 1e-5 (absolute 1e-6). On one machine the runs are deterministic (one thread,
fixed seeds, no data workers: three runs here wrote bitwise-equal files), but float32 kernels may
round differently on another CPU instruction set or torch build, and a few optimizer steps amplify
last-bit differences (not measured here: a margin, not a figure). A refactor that changes the math
(an operation order in the loss, a missed parameter group, another data order) moves these losses
far more than 1e-5 relative.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clip_fixtures import tiny_offline_setup, tiny_overrides
from llm_fixtures import random_word_captions, write_tiny_llama

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("LLM2CLIP_UPDATE_GOLDEN") == "1"
REL, ABS = 1e-5, 1e-6
# Overrides on top of tests/clip_fixtures.tiny_overrides: the tiny config's global batch (64) and
# data workers replaced by a global batch of 8 read in the main process (the teacher embeds as the
# tiny configs say: causal, mean pooling, 32 tokens, as the fixture's sidecars were extracted).
PRETRAIN = {"model.global_batch_size": 8, "model.num_workers": 0, "trainer.max_steps": 6,
            "model.validation_ds.every_n_steps": 3, "exp_manager.checkpoint_every_n_steps": 100}


def _relative(overrides: list[str], root: Path) -> list[str]:
    """The overrides as recorded in a golden file: temporary paths relative to the fixture root."""
    return [o.replace(str(root), "<fixtures>") for o in overrides]


def _check(name: str, overrides: list[str], losses: list[tuple[int, float]], root: Path) -> None:
    path = GOLDEN / f"{name}.json"
    record = {"overrides": _relative(overrides, root), "losses": [[int(s), float(v)] for s, v in losses]}
    if UPDATE:
        lines = ",\n".join(f"  {json.dumps(x)}" for x in record["losses"])
        path.write_text(f'{{"overrides": {json.dumps(record["overrides"])},\n "losses": [\n{lines}\n]}}\n')
        return
    golden = json.loads(path.read_text())
    assert record["overrides"] == golden["overrides"], f"{path}: the test's overrides changed; rerun with LLM2CLIP_UPDATE_GOLDEN=1"
    assert [s for s, _ in record["losses"]] == [s for s, _ in golden["losses"]]
    for (step, got), (_, want) in zip(record["losses"], golden["losses"]):
        assert got == pytest.approx(want, rel=REL, abs=ABS), f"{name} step {step}: loss {got!r}, golden {want!r}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    return root, *tiny_offline_setup(root, n_train=48, n_val=16)


def _pretrain_overrides(teacher, train, val, exp, **extra):
    """tiny_overrides with PRETRAIN and `extra` applied, one entry per key (the last value wins)."""
    merged = dict(o.split("=", 1) for o in tiny_overrides(teacher, train, val, exp, **{**PRETRAIN, **extra}))
    return [f"{k}={v}" for k, v in merged.items()]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _losses(log: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, log.read_text().splitlines())]


def test_pretrain_tiny_offline(tiny):
    root, teacher, train, val = tiny
    over = ["--config-name", "pretrain_tiny", *_pretrain_overrides(teacher, train, val, root / "offline")]
    _run([sys.executable, "-m", "llm2clip_nemo.cli", "pretrain", *over])
    _check("pretrain_tiny_offline", over, _losses(root / "offline" / "pretrain_tiny" / "losses.jsonl"), root)


def test_pretrain_tiny_online_teacher_tp2(tiny):
    root, teacher, train, val = tiny
    over = ["--config-name", "pretrain_tiny", *_pretrain_overrides(
        teacher, train, val, root / "online", **{"model.teacher_mode": "online",
                                                 "model.teacher.tensor_parallel": 2, "trainer.devices": 2})]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "llm2clip_nemo.cli", "pretrain", *over]
    _run(cmd)
    _check("pretrain_tiny_online_tp2", over, _losses(root / "online" / "pretrain_tiny" / "losses.jsonl"), root)


def test_caption_contrastive_tiny(tmp_path):
    """Stage 1 in this process (as tests/test_caption_contrastive_train.py runs it), LoRA dropout off."""
    from llm2clip_nemo.recipes.caption_contrastive import load, run

    write_tiny_llama(tmp_path / "llm")
    caps = random_word_captions(64, seed=1)
    rows = [json.dumps({"id": i, "captions": [caps[2 * i], caps[2 * i + 1]]}) for i in range(32)]
    (tmp_path / "train.jsonl").write_text("\n".join(rows[:24]))
    (tmp_path / "val.jsonl").write_text("\n".join(rows[24:]))
    o = {"model.llm_path": tmp_path / "llm", "model.data.train_path": tmp_path / "train.jsonl",
         "model.data.val_path": tmp_path / "val.jsonl", "model.data.global_batch_size": 8, "model.data.max_length": 32,
         "model.data.instruction": "w7 w8", "model.lora.dropout": 0.0, "model.lora.top_layers": 1,
         "model.optim.warmup_steps": 1, "trainer.max_steps": 5, "trainer.val_check_interval": 5,
         "trainer.enable_progress_bar": False, "exp_manager.checkpoint_every_n_steps": 100,
         "exp_manager.exp_dir": tmp_path / "exp", "cra_before": "false", "export_merged": "false"}
    over = [f"{k}={v}" for k, v in o.items()]
    _check("caption_contrastive_tiny", over, run(load("caption_contrastive_tiny", over))["loss_curve"], tmp_path)
