"""Stage 2 through the real recipe (`recipes.train_clip.run`, pretrain_tiny) under `model.parallel`:
FSDP2 vs DDP on 2 gloo ranks (issue 16, "Must show")."""
from __future__ import annotations

import pytest
import torch
from clip_fixtures import tiny_offline_setup, tiny_overrides
from dist_utils import run_workers

REL = 1e-5
# golden-style: a global batch of 8 read in the main process, validation (image_features under FSDP2) at step 5
BASE = {"model.global_batch_size": 8, "model.num_workers": 0, "trainer.devices": 2,
        "model.validation_ds.every_n_steps": 5, "exp_manager.checkpoint_every_n_steps": 100}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp_train")
    return root, *tiny_offline_setup(root, n_train=48, n_val=16)


def overrides(tiny, exp, steps=10, **extra) -> list[str]:
    root, teacher, train, val = tiny
    merged = dict(o.split("=", 1) for o in tiny_overrides(teacher, train, val, root / exp, steps=steps,
                                                         **{**BASE, **extra}))
    return [f"{k}={v}" for k, v in merged.items()]


def _train_worker(rank, world, over):
    """Run the recipe; return (per-step losses, full weights gathered from every layout, validation)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from llm2clip_nemo.config import load_config
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig, run

    res = run(load_config(TrainCLIPConfig, "pretrain_tiny", over))
    net = res["model"].net
    full = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    kinds = sorted({type(p).__name__ for p in net.parameters()})
    return res["losses"], {k: v for k, v in full.items() if isinstance(v, torch.Tensor)}, res["validation"], kinds


def _assert_same_losses(got, want):
    assert [s for s, _ in got] == [s for s, _ in want]
    for (step, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, rel=REL), f"step {step}: {a!r} vs {b!r}"


def test_fsdp2_equals_ddp_on_two_ranks(tiny):
    """10 steps of pretrain_tiny on 2 gloo ranks: FSDP2 (sharded DTensor parameters) and DDP (composable
    replicate) give the same per-step losses (relative 1e-5), the same final weights and the same
    held-out retrieval."""
    ddp = run_workers(_train_worker, 2, overrides(tiny, "ddp", **{"model.parallel.data_parallel": "ddp"}))
    fsdp = run_workers(_train_worker, 2, overrides(tiny, "fsdp", **{"model.parallel.data_parallel": "fsdp2"}))
    (l_ddp, w_ddp, v_ddp, k_ddp), (l_fsdp, w_fsdp, v_fsdp, k_fsdp) = ddp[0], fsdp[0]
    assert k_ddp == ["Parameter"] and "DTensor" in k_fsdp  # really the two layouts
    assert len(l_ddp) == 10
    _assert_same_losses(l_fsdp, l_ddp)
    _assert_same_losses(fsdp[1][0], ddp[1][0])  # rank 1's own micro-batch losses too
    assert set(w_fsdp) == set(w_ddp)
    for name, want in w_ddp.items():
        torch.testing.assert_close(w_fsdp[name], want, rtol=1e-5, atol=1e-6, msg=name)
    assert [v["step"] for v in v_fsdp] == [v["step"] for v in v_ddp] == [5, 10]
    for a, b in zip(v_fsdp, v_ddp):
        assert a["mean_R@1"] == pytest.approx(b["mean_R@1"]) if "mean_R@1" in a else a == b
