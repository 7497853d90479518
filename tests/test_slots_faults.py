"""Faults found by trying data slots as a user would (resume at another world size, bad inputs); each
test pins the behaviour the fix gives (the finite-epoch stop of every rank together is tested through the recipe
in tests/test_fsdp_train.py)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from dist_utils import run_workers
from synthetic_shards import tiny_stream_config as stream_cfg
from synthetic_shards import write_synthetic_shards as make_shards

from llm2clip_nemo.data.spec import DataSourceError
from llm2clip_nemo.data.stream import ImageTextStream

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("slot_fault_shards")
    make_shards(str(d), n_shards=4, per_shard=6)
    return str(d / "shard-{000000..000003}.tar")


def _streams(urls: str, world: int, slots: int | None = None, **kw) -> list[ImageTextStream]:
    cfg = {"urls": urls, "shuffle_buffer": 5, "batch_size": 4 // world, "slots": slots, **kw}
    return [ImageTextStream(stream_cfg(**cfg), rank=r, world_size=world) for r in range(world)]


def test_error_raised_in_a_loader_worker_keeps_its_one_line_message(shards):
    """A position saved with 2 DataLoader workers resumed with 1 worker process: the refusal is raised in
    the worker, and torch re-raises it in the main process with the worker's traceback as its message;
    the DataSourceError the CLI prints (one line, exit 2) is the message alone, the traceback kept aside.
    (Before: 'Caught DataSourceError in DataLoader worker process 0.\\nOriginal Traceback ...'.)"""
    first = _streams(shards, 2)
    for s in first:
        for _ in zip(range(2), s.loader(num_workers=2)):
            pass
    (one,) = _streams(shards, 1)
    assert one.load_state_dicts([json.loads(json.dumps(s.state_dict())) for s in first]) is True
    with pytest.raises(DataSourceError) as e:
        next(iter(one.loader(num_workers=1)))
    assert str(e.value) == ("the stream position was saved with 2 DataLoader workers per rank but this loader has "
                            "1: positions are per worker, so resume with num_workers=2")
    assert e.value.worker_traceback.startswith("Caught DataSourceError in DataLoader worker process 0.\n")
    assert "Traceback (most recent call last)" in e.value.worker_traceback
    # subclasses too (NoValidSamplesError), whatever the module path torch printed
    from llm2clip_nemo.data.stream_samples import NoValidSamplesError

    wrapped = ("Caught NoValidSamplesError in DataLoader worker process 3.\nOriginal Traceback (most recent call "
               "last):\n  File \"x.py\", line 1, in f\n    raise NoValidSamplesError(\n"
               "llm2clip_nemo.data.stream_samples.NoValidSamplesError: data source 'a' gave 9 items: fix it\n")
    assert str(NoValidSamplesError(wrapped)) == "data source 'a' gave 9 items: fix it"
    assert str(DataSourceError("plain: message")) == "plain: message"


def test_global_batch_message_counts_the_micro_batches():
    """A global batch of 6 with 2 micro-batches per step on 1 rank is a per-rank micro-batch of 3, which
    2 data slots cannot split although 6 is divisible by 2: the message must name slots x micro-batches
    (before: 'use a global batch divisible by 2', which 6 already is)."""
    from llm2clip_nemo.recipes.train_clip import per_rank_batch

    b = per_rank_batch(6, 1, 2)
    with pytest.raises(DataSourceError) as e:
        ImageTextStream(stream_cfg(urls="unused", check_paths=False, batch_size=b, slots=2), rank=0, world_size=1)
    assert str(e.value) == ("the per-rank batch of 3 does not split into the 2 data slots each rank reads (2 slots "
                            "over 1 ranks): use a global batch divisible by 2 x the micro-batches per step "
                            "(trainer.accumulate_grad_batches)")


def test_a_rank_state_copied_over_another_is_named(shards):
    """At another world size every saved rank's state is merged; rank 0's state given twice (its file
    copied over rank 1's) used to merge into slots [0] and fail with a message naming the library calls
    ('resume from the states of every rank (merge_states / load_state_dicts)'). Now: one line naming the copy."""
    first = _streams(shards, 2)
    for s in first:
        next(iter(s))
    s0 = first[0].state_dict()
    (one,) = _streams(shards, 1)
    with pytest.raises(DataSourceError) as e:
        one.load_state_dicts([s0, dict(s0)])
    assert str(e.value) == ("the saved stream states of ranks 0 and 0 both hold data slots [0]: a rank's file was "
                            "copied over another's; resume from a checkpoint all ranks wrote together")


def test_a_stream_state_of_an_unknown_version_is_one_line(shards):
    """A checkpoint whose stream state has a version this code does not know (a newer llm2clip_nemo):
    before, ValueError, which the checkpoint hook does not map (a traceback); now DataSourceError, one line (exit 2)."""
    (one,) = _streams(shards, 1)
    state = dict(one.state_dict(), version=9)
    for load in (one.load_state_dict, lambda s: one.load_state_dicts([s])):
        with pytest.raises(DataSourceError) as e:
            load(state)
        assert str(e.value) == ("the saved stream state has version 9 but this llm2clip_nemo reads versions 1 to 3: "
                                "resume with the llm2clip_nemo version that wrote the checkpoint")


def test_a_missing_tensor_file_is_one_line(tmp_path):
    """A checkpoint directory lacking one of the .distcp files its .metadata lists: before, dcp.load's
    CheckpointException carrying a traceback (through the CLI: a traceback); now TrainingCheckpointError
    naming the file, raised by every rank alike before the collective load (the checkpoint hook: exit 2)."""
    from llm2clip_nemo.engine.checkpoint import TrainingCheckpointError, load_checkpoint, save_checkpoint

    lin = torch.nn.Linear(2, 1)
    save_checkpoint(tmp_path / "ck", lin, None, step=1).wait()
    (tmp_path / "ck" / "__0_0.distcp").unlink()
    with pytest.raises(TrainingCheckpointError) as e:
        load_checkpoint(tmp_path / "ck", lin)
    assert str(e.value) == (f"{tmp_path / 'ck'} lacks __0_0.distcp (tensor files its .metadata lists): copy the whole "
                            "directory or use an earlier step.")


def _ckpt_worker(rank, world, root):
    """2 gloo ranks: train a Linear 2 (and 3) steps, save each; three broken copies of the step-2
    checkpoint (rank 1's file missing, damaged, or of step 3); both ranks load each: per copy, the
    (exception type, message) of this rank."""
    import torch.distributed as dist
    from test_engine import Cursor

    from llm2clip_nemo.engine import TrainEngine
    from llm2clip_nemo.engine.checkpoint import rank_file
    from llm2clip_nemo.engine.optim import OptimConfig

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 1)
    cfg = OptimConfig(lr=0.1, warmup_steps=0, schedule="constant", grad_clip=0.0, weight_decay=0.0)
    eng = TrainEngine(lin, cfg, 10, dp_group=dist.group.WORLD, data=Cursor())
    for step in (2, 3):
        while eng.step < step:
            eng.train_step(None, lambda b: lin(torch.ones(1, 2)).sum(), samples=1)
        eng.save_sharded(f"{root}/step{step}").wait()
        if step == 2:
            meta = eng.meta_state_dict()
    cases = ("missing", "damaged", "other_step")
    dist.barrier()
    if rank == 0:
        for case in cases:
            shutil.copytree(f"{root}/step2", f"{root}/{case}")
        rank_file(f"{root}/missing", 1).unlink()
        rank_file(f"{root}/damaged", 1).write_bytes(rank_file(f"{root}/step2", 1).read_bytes()[:100])
        shutil.copy(rank_file(f"{root}/step3", 1), rank_file(f"{root}/other_step", 1))
    dist.barrier()
    out = []
    for case in cases:
        try:
            eng.load_sharded(f"{root}/{case}", meta)
            out.append(("loaded", eng.data.n))
        except Exception as e:  # noqa: BLE001 - the outcome is the value under test
            out.append((type(e).__name__, str(e).replace(str(root), "ROOT")))
    return out


def test_a_rank_that_cannot_take_its_part_stops_every_rank_in_one_line(tmp_path):
    """A 2-rank checkpoint whose rank 1 file is missing, damaged, or of a later step, resumed at 2 ranks:
    only rank 1 reads that file, so before the fix rank 0 went on into the collective load alone (a hang,
    or gloo's 'Connection reset by peer' RuntimeError), a damaged file raised torch's UnpicklingError and
    a file of another step was taken silently. Now both ranks raise TrainingCheckpointError with rank 1's
    one-line message naming the file and the fix (the CLI: exit 2)."""
    f = "ROOT/{}/rank_00001.pt"
    want = [f"{f.format('missing')} is missing: the checkpoint ROOT/missing was written by 2 ranks and each "
            "leaves its file; copy the whole directory or use an earlier step.",
            f"{f.format('damaged')} cannot be read as a torch file (RuntimeError): it is damaged; copy the whole "
            "directory again or use an earlier step.",
            f"{f.format('other_step')} is of step 3 but ROOT/other_step holds step 2: the directory mixes files of "
            "two checkpoints; copy the whole directory of one step, or use an earlier step."]
    got = run_workers(_ckpt_worker, 2, str(tmp_path), timeout=120)
    assert got == [[("TrainingCheckpointError", w) for w in want]] * 2
