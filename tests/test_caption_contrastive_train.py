"""Stage 1 recipe end to end on a tiny random Llama: a killed run resumed with resume_if_exists
continues from its last checkpoint with the uninterrupted run's losses; CLI entry; outputs."""
from __future__ import annotations

import json

import pytest
from llm_fixtures import random_word_captions, write_tiny_llama

from llm2clip_nemo.recipes.caption_contrastive import load, main, run


class Killed(RuntimeError):
    pass


def _kill_at(step: int):
    from lightning.pytorch.callbacks import Callback

    class KillAt(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == step:
                raise Killed(f"killed at step {step}")

    return KillAt()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cc")
    write_tiny_llama(d / "llm")
    caps = random_word_captions(120, seed=1)
    rows = [json.dumps({"id": i, "captions": [caps[2 * i], caps[2 * i + 1]]}) for i in range(60)]
    (d / "train.jsonl").write_text("\n".join(rows[:48]))
    (d / "val.jsonl").write_text("\n".join(rows[48:]))
    return d


def overrides(d, exp, **kw):
    o = {"model.llm_path": d / "llm", "model.data.train_path": d / "train.jsonl", "model.data.val_path": d / "val.jsonl",
         "model.data.global_batch_size": 8, "model.data.max_length": 32, "model.data.instruction": "w7 w8",
         "model.lora.dropout": 0.0, "model.lora.top_layers": 1, "model.optim.warmup_steps": 1, "trainer.max_steps": 5,
         "trainer.val_check_interval": 2, "trainer.enable_progress_bar": False,
         "exp_manager.checkpoint_every_n_steps": 2, "exp_manager.exp_dir": exp, **kw}
    return [f"{k}={v}" for k, v in o.items()]


def test_killed_run_resumes_from_last_checkpoint(data, tmp_path):
    full = run(load("caption_contrastive_tiny", overrides(data, tmp_path / "a", cra_before="false")))
    assert [s for s, _ in full["loss_curve"]] == [1, 2, 3, 4, 5]

    cfg = load("caption_contrastive_tiny", overrides(data, tmp_path / "b", cra_before="false"))
    with pytest.raises(Killed):
        run(cfg, callbacks=[_kill_at(3)])  # dies during step 4; step 3 is lost, checkpoint at step 2 remains
    ckpts = sorted(p.name for p in (tmp_path / "b" / cfg.exp_manager.name / "checkpoints").glob("*.ckpt"))
    assert "step=2-last.ckpt" in ckpts and not any(c.startswith("step=4") for c in ckpts), ckpts

    resumed = run(load("caption_contrastive_tiny", overrides(data, tmp_path / "b", cra_before="false")))
    steps = [s for s, _ in resumed["loss_curve"]]
    assert steps == [3, 4, 5], steps  # the step counter continues after the checkpoint
    ref = dict(full["loss_curve"])
    for s, loss in resumed["loss_curve"]:
        assert loss == pytest.approx(ref[s], rel=1e-6, abs=1e-6), (s, loss, ref[s])
    assert resumed["cra_after"] == pytest.approx(full["cra_after"])


def test_cli_writes_merged_hf_dir_and_tensorboard(data, tmp_path, capsys):
    rc = main(["--config-name", "caption_contrastive_tiny", *overrides(data, tmp_path, **{"trainer.max_steps": 2})])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('{"cra_before"')]
    out = json.loads(lines[-1])
    log_dir = tmp_path / "caption_contrastive_tiny"
    assert out["log_dir"] == str(log_dir) and out["hf_merged"] == str(log_dir / "hf_merged")
    assert (log_dir / "hf_merged" / "model.safetensors").is_file() and (log_dir / "hf_merged" / "tokenizer.json").is_file()
    assert list(log_dir.glob("events.out.tfevents.*"))
    assert 0.0 <= out["cra_before"] <= 100.0 and 0.0 <= out["cra_after"] <= 100.0
