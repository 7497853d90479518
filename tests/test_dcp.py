"""engine/checkpoint.py: DCP checkpoints resumed across layouts (DDP <-> FSDP2) and world sizes (2 -> 1),
with the RNG and the caller's extras; one-process full state dict; refusals."""
from __future__ import annotations

import pytest
import torch
from fsdp_fixtures import STEPS, K, build, one_rank, train, two_rank_runs  # noqa: F401  (fixtures)

from llm2clip_nemo.engine.checkpoint import (
    TrainingCheckpointError,
    load_checkpoint,
    read_full_state_dict,
    save_checkpoint,
)
from llm2clip_nemo.engine.parallelize import ParallelizeConfig


@pytest.mark.parametrize("resume,saved_by", [("fsdp2_to_ddp", "fsdp2"), ("ddp_to_fsdp2", "ddp")])
def test_resume_under_the_other_layout(two_rank_runs, resume, saved_by):  # noqa: F811
    for rank, results in enumerate(two_rank_runs[:2]):
        run, ref = results[resume], results[saved_by]
        assert run["loaded"].step == K and run["loaded"].saved_world_size == 2
        assert run["loaded"].extras == {"data": {"next_step": K}}
        assert run["loaded"].rank_state == {"rank": rank}
        torch.testing.assert_close(run["probe"], ref["probe"], rtol=0, atol=0)  # RNG restored
        for name, v in ref["ema_at_k"].items():
            torch.testing.assert_close(run["ema"][name], v, rtol=0, atol=0, msg=name)
        assert run["losses"] == pytest.approx(ref["losses"][K:], rel=1e-5)
        for name, w in ref["weights"].items():
            torch.testing.assert_close(run["weights"][name], w, rtol=1e-5, atol=1e-6, msg=name)  # measured 1.2e-7


def test_resume_two_ranks_on_one(two_rank_runs, one_rank):  # noqa: F811
    r0, _, root = two_rank_runs
    for saved_by, cfg in (("fsdp2", ParallelizeConfig()), ("ddp", ParallelizeConfig(data_parallel="fsdp2"))):
        net, opt, ema = build(one_rank, cfg)
        torch.manual_seed(7)
        before = torch.get_rng_state()
        loaded = load_checkpoint(root / saved_by, net, opt, modules={"ema": ema})
        assert (loaded.step, loaded.saved_world_size, loaded.rank_state) == (K, 2, None)
        assert torch.equal(torch.get_rng_state(), before)  # another world size: per-rank RNG not restored
        losses = train(net, opt, ema, range(K, STEPS), 0, 1)
        assert losses == pytest.approx(r0[saved_by]["losses"][K:], rel=1e-5), saved_by


def test_full_state_dict_in_one_process(two_rank_runs):  # noqa: F811
    r0, _, root = two_rank_runs
    for saved_by in ("fsdp2", "ddp"):
        sd = read_full_state_dict(root / saved_by)
        tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
        assert tensors.keys() == r0[saved_by]["weights_at_k"].keys()
        for name, w in r0[saved_by]["weights_at_k"].items():
            assert torch.equal(tensors[name], w), (saved_by, name)
        assert {k for k in sd if k not in tensors} == {k for k in sd if k.endswith("_extra_state")}
        ema = read_full_state_dict(root / saved_by, "ema")
        assert ema.keys() == r0[saved_by]["ema_at_k"].keys()
        assert all(torch.equal(ema[k], v) for k, v in r0[saved_by]["ema_at_k"].items())
    with pytest.raises(TrainingCheckpointError) as e:
        read_full_state_dict(root / "fsdp2", "teacher")
    assert str(e.value) == (f"{root / 'fsdp2'} holds no 'teacher' state (it has ['ema', 'model', 'optim']): "
                            "pass one of those as key.")


def test_refusals(tmp_path, one_rank):  # noqa: F811
    net, opt, ema = build(one_rank, ParallelizeConfig())
    with pytest.raises(TrainingCheckpointError) as e:
        load_checkpoint(tmp_path / "nothing", net, opt)
    assert str(e.value) == (f"{tmp_path / 'nothing'} is not a complete checkpoint (no .metadata or train_state.json): "
                            "point at a directory written by save_checkpoint, or an earlier step if this one was interrupted.")
    save_checkpoint(tmp_path / "s1", net, None, step=1)
    with pytest.raises(ValueError) as e:
        save_checkpoint(tmp_path / "s1", net, None, step=1)
    assert str(e.value) == f"{tmp_path / 's1'} already holds a checkpoint: save each step to a new directory."
    with pytest.raises(TrainingCheckpointError) as e:
        load_checkpoint(tmp_path / "s1", net, opt)
    assert str(e.value) == (f"{tmp_path / 's1'} holds no 'optim' state (it has ['model']): load without 'optim', "
                            "or from a checkpoint saved with it.")
    with pytest.raises(ValueError, match="extra module name 'model' is reserved"):
        save_checkpoint(tmp_path / "s2", net, opt, step=1, modules={"model": ema})


def test_async_save_writes_the_weights_of_the_call(tmp_path, one_rank):  # noqa: F811
    # the tensors are copied before the call returns: a step taken while the writer runs is not in the file
    from fsdp_fixtures import full_weights

    net, opt, ema = build(one_rank, ParallelizeConfig(data_parallel="fsdp2"))
    train(net, opt, ema, range(1), 0, 1)
    before = full_weights(net)
    pending = save_checkpoint(tmp_path / "a", net, opt, step=1, async_save=True)
    train(net, opt, ema, range(1, 2), 0, 1)
    assert pending.wait() == tmp_path / "a"
    saved = read_full_state_dict(tmp_path / "a")
    assert not torch.equal(full_weights(net)["vision.projection.weight"], before["vision.projection.weight"])
    for name, w in before.items():
        assert torch.equal(saved[name], w), name
