"""Stage 2 through the real recipe (`recipes.train_clip.run`, pretrain_tiny) under `model.parallel`:
FSDP2 vs DDP on 2 gloo ranks (issue 16, "Must show")."""
from __future__ import annotations

import shutil

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


def _runs_worker(rank, world, runs):
    """Run the recipe once per overrides list in `runs`, in this process one after the other; per run:
    (per-step losses of this rank, full weights gathered from every layout, validation, parameter kinds)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from llm2clip_nemo.config import load_config
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig, run

    out = []
    for over in runs:
        res = run(load_config(TrainCLIPConfig, "pretrain_tiny", over))
        net = res["model"].net
        full = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        kinds = sorted({type(p).__name__ for p in net.parameters()}
                       | ({"compiled"} if any(getattr(m, "_compiled_call_impl", None) for m in net.modules()) else set()))
        out.append((res["losses"], {k: v for k, v in full.items() if isinstance(v, torch.Tensor)}, res["validation"],
                    kinds))
    return out


def _assert_same_losses(got, want):
    assert [s for s, _ in got] == [s for s, _ in want]
    for (step, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, rel=REL), f"step {step}: {a!r} vs {b!r}"


K = 4  # the interrupted runs stop after step K (their checkpoint: last.ckpt + last.dcp/ at step K)
EMA = {"model.ema.enabled": "true", "model.ema.decay": 0.9, "model.ema.warmup_steps": 2}


@pytest.fixture(scope="module")
def runs(tiny):
    """Seven runs on 2 gloo ranks in one pair of processes: DDP and FSDP2 for 10 steps; FSDP2 stopped
    after step K then resumed under DDP to 10; DDP stopped after K then resumed under FSDP2; FSDP2
    stopped after K (resumed on one rank by a test below)."""
    def o(exp, dp, steps=10, **extra):
        return overrides(tiny, exp, steps, **{"model.parallel.data_parallel": dp, **EMA, **extra})

    names = ["ddp", "fsdp", "f2d_first", "f2d_resumed", "d2f_first", "d2f_resumed", "to1_first"]
    plan = [o("ddp", "ddp", **{"exp_manager.checkpoint_every_n_steps": 5}), o("fsdp", "fsdp2"), o("f2d", "fsdp2", K), o("f2d", "ddp"), o("d2f", "ddp", K),
            o("d2f", "fsdp2"), o("to1", "fsdp2", K)]
    per_rank = run_workers(_runs_worker, 2, plan)
    return {n: [per_rank[r][i] for r in range(2)] for i, n in enumerate(names)}


def test_fsdp2_equals_ddp_on_two_ranks(runs):
    """10 steps of pretrain_tiny on 2 gloo ranks: FSDP2 (sharded DTensor parameters) and DDP (composable
    replicate) give the same per-step losses on both ranks (relative 1e-5), the same final weights
    and the same held-out retrieval at steps 5 and 10."""
    for rank in range(2):
        (l_ddp, w_ddp, v_ddp, k_ddp), (l_fsdp, w_fsdp, v_fsdp, k_fsdp) = runs["ddp"][rank], runs["fsdp"][rank]
        assert k_ddp == ["Parameter"] and "DTensor" in k_fsdp  # really the two layouts
        assert [s for s, _ in l_ddp] == list(range(10))
        _assert_same_losses(l_fsdp, l_ddp)
    w_ddp, w_fsdp = runs["ddp"][0][1], runs["fsdp"][0][1]  # gathered on rank 0
    assert set(w_fsdp) == set(w_ddp) and len(w_ddp) > 10
    for name, want in w_ddp.items():
        torch.testing.assert_close(w_fsdp[name], want, rtol=1e-5, atol=1e-6, msg=name)
    assert [v["step"] for v in v_fsdp] == [v["step"] for v in v_ddp] == [5, 10]
    for a, b in zip(v_fsdp, v_ddp):
        assert a["i2t_R@1"] == pytest.approx(b["i2t_R@1"]) and a["t2i_R@1"] == pytest.approx(b["t2i_R@1"])


@pytest.mark.parametrize("first,resumed", [("f2d_first", "f2d_resumed"), ("d2f_first", "d2f_resumed")])
def test_resume_under_the_other_layout_repeats_the_losses(runs, first, resumed):
    """Stopped after step K under one layout (its checkpoint: the .ckpt + the DCP directory of model,
    optimizer and EMA, per-rank data position and RNG), resumed under the other: steps 0..K-1 and
    K..9 together are the uninterrupted DDP run's losses on each rank (relative 1e-5), and so are the
    final weights."""
    for rank in range(2):
        ref = runs["ddp"][rank][0]
        assert [s for s, _ in runs[first][rank][0]] == list(range(K))
        _assert_same_losses(runs[first][rank][0] + runs[resumed][rank][0], ref)
    for name, want in runs["ddp"][0][1].items():
        torch.testing.assert_close(runs[resumed][0][1][name], want, rtol=1e-5, atol=1e-6, msg=name)


def test_fsdp2_checkpoint_and_model_nemo_hold_the_full_weights(tiny, runs):
    """The FSDP2 run's last.ckpt read in one process (`models.loading.read_ckpt`: the DCP directory's
    shards joined) and its model.nemo equal the weights gathered at the end of training; the EMA read
    from the FSDP2-resumed run equals the uninterrupted DDP run's (relative 1e-5)."""
    from llm2clip_nemo.models.loading import read_ckpt, read_nemo

    root = tiny[0]
    gathered = runs["fsdp"][0][1]
    run_dir = root / "fsdp" / "pretrain_tiny"
    (ckpt,) = (run_dir / "checkpoints").glob("*last.ckpt")
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.dcp/*")) == ["step_00000010"]
    _, raw, extra = read_ckpt(ckpt, "raw")
    _, nemo = read_nemo(run_dir / "model.nemo")
    for name, want in gathered.items():
        assert torch.equal(raw[f"net.{name}"], want), name
        assert torch.equal(nemo[f"net.{name}"], want), name
    ema = {}
    for exp in ("ddp", "d2f"):
        (c,) = (root / exp / "pretrain_tiny" / "checkpoints").glob("*last.ckpt")
        ema[exp] = read_ckpt(c, "ema")[1]
    assert set(ema["ddp"]) == set(ema["d2f"]) and ema["ddp"]
    # the DDP run checkpointed every 5 steps: one DCP directory per .ckpt; last's shares step 10's files
    ckpts = root / "ddp" / "pretrain_tiny" / "checkpoints"
    assert sorted(str(p.relative_to(ckpts)) for p in ckpts.glob("*.dcp/*")) == [
        "step=10-last.dcp/step_00000010", "step=10.dcp/step_00000010", "step=5.dcp/step_00000005"]
    for f in (ckpts / "step=10.dcp" / "step_00000010").iterdir():
        assert f.stat().st_ino == (ckpts / "step=10-last.dcp" / "step_00000010" / f.name).stat().st_ino, f.name
    for name, want in ema["ddp"].items():
        torch.testing.assert_close(ema["d2f"][name], want, rtol=1e-5, atol=1e-6, msg=name)


def test_compile_equals_eager_through_the_recipe(tiny):
    """5 steps of pretrain_tiny on one rank: model.parallel.compile=true composed with activation
    checkpointing and fsdp2 gives the eager DDP run's per-step losses (relative 1e-5)."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile (inductor) on CPU needs a C++ compiler; none on PATH (g++/c++)")
    one = {"trainer.devices": 1}
    eager = overrides(tiny, "eager", 5, **one)
    compiled = overrides(tiny, "compiled", 5, **one, **{"model.parallel.compile": "true",
                                                        "model.parallel.activation_checkpointing": "true",
                                                        "model.parallel.data_parallel": "fsdp2"})
    (r_eager, r_compiled), = run_workers(_runs_worker, 1, [eager, compiled])
    assert [s for s, _ in r_eager[0]] == list(range(5)) and r_eager[0][0][1] != r_eager[0][-1][1]
    assert r_eager[3] == ["Parameter"] and r_compiled[3] == ["DTensor", "Parameter", "compiled"]
    _assert_same_losses(r_compiled[0], r_eager[0])


def test_two_rank_fsdp2_checkpoint_resumes_on_one_rank(tiny, runs):
    """Stopped after step K on 2 FSDP2 ranks, resumed on 1 DDP rank: DCP reshards the tensors 2 -> 1 and
    the one rank reads both data slots (global batch 8 = the two ranks' halves in rank order), so steps
    K..9 are the uninterrupted 2-rank run's global losses (the mean of its two ranks' local losses;
    relative 1e-5) and the final weights are its weights."""
    assert [s for s, _ in runs["to1_first"][0][0]] == list(range(K))
    (r,), = run_workers(_runs_worker, 1, [overrides(tiny, "to1", 10, **{"trainer.devices": 1, **EMA})])
    assert r[3] == ["Parameter"]  # restored into a plain (unsharded) net
    ref = [(s, (a + b) / 2) for (s, a), (_, b) in zip(runs["ddp"][0][0], runs["ddp"][1][0])]
    assert runs["ddp"][0][0][K][1] != runs["ddp"][1][0][K][1]  # the ranks' local losses differ: the mean is a real check
    _assert_same_losses(r[0], ref[K:])
    for name, want in runs["ddp"][0][1].items():
        torch.testing.assert_close(r[1][name], want, rtol=1e-5, atol=1e-6, msg=name)


def test_refused_combinations_name_the_fix():
    """vision.recompute with parallel.activation_checkpointing, and Lightning's FSDP for stage 2, are one-line config errors."""
    from llm2clip_nemo.config import ConfigError, load_config
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig
    from llm2clip_nemo.recipes.trainer import TrainerConfig, resolve_strategy

    with pytest.raises(ConfigError) as e:
        load_config(TrainCLIPConfig, "pretrain_tiny", ["model.vision.recompute=true",
                                                       "model.parallel.activation_checkpointing=true"])
    assert str(e.value) == ("model.vision.recompute=true and model.parallel.activation_checkpointing=true would "
                            "checkpoint every block twice: set one of them to false.")
    with pytest.raises(ConfigError) as e:
        resolve_strategy(TrainerConfig(strategy="fsdp"), self_parallel=True)
    assert str(e.value) == ("trainer.strategy=fsdp: stage 2 shards its network itself; set trainer.strategy=auto "
                            "and model.parallel.data_parallel=fsdp2.")


def _cli_worker(rank, world, argv):
    import contextlib
    import io

    from llm2clip_nemo.recipes.train_clip import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv, "pretrain")
    return code, [line for line in err.getvalue().splitlines() if line.startswith("llm2clip-nemo")]


def test_resume_that_does_not_fit_exits_2_in_one_line(tiny, runs):
    """Resuming the FSDP2 run's checkpoint (trained with EMA) without EMA: exit code 2, one line naming the fix."""
    root = tiny[0]
    shutil.copytree(root / "fsdp", root / "no_ema")
    argv = ["--config-name", "pretrain_tiny", *overrides(tiny, "no_ema", 12, **{"trainer.devices": 1})]
    assert run_workers(_cli_worker, 1, argv) == [(2, [
        "llm2clip-nemo pretrain: config error: the checkpoint has an EMA but this run sets model.ema.enabled=False: "
        "resume with the setting it was trained with."])]


def test_result_json_counts_the_samples_of_every_rank(tiny, runs):
    """The 2-rank DDP run trained 10 steps of global batch 8: its result.json data summary counts the
    80 valid samples of both ranks (each rank's readers combined), one caption field each."""
    import json

    res = json.loads((tiny[0] / "ddp" / "pretrain_tiny" / "result.json").read_text())
    assert res["global_step"] == 10 and sum(res["data"]["valid"]) == 80 and sum(res["data"]["fields"].values()) == 80


def test_finite_epoch_stops_every_rank_at_the_first_ranks_end(tiny):
    """Finite epoch mode (epochs=1, 48 samples in 3 shards of 16, global batch 8), max_steps 10: on
    2 ranks the shards split 2 + 1, so rank 1 has 4 batches of 4 and rank 0 eight; both ranks stop
    after step 3 together (no rank waits in a collective its peer never joins). On 1 rank the 6
    batches are trained and the run ends (it no longer starts empty epochs until max_steps)."""
    fin = {"model.train_ds.epochs": 1, "model.train_ds.resampled": "false", "model.validation_ds.every_n_steps": 100}
    two = run_workers(_runs_worker, 2, [overrides(tiny, "finite2", 10, **fin)], timeout=300)
    assert [[s for s, _ in r[0][0]] for r in two] == [[0, 1, 2, 3]] * 2
    (one,), = run_workers(_runs_worker, 1, [overrides(tiny, "finite1", 10, **{**fin, "trainer.devices": 1})], timeout=300)
    assert [s for s, _ in one[0]] == list(range(6))
