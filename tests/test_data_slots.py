"""Data slots: the global batch is the same sequence of samples at every world size dividing the slot
count, and a position saved at one world size resumes exactly at another (issue 16)."""
from __future__ import annotations

import json

import pytest
import torch
from synthetic_shards import tiny_stream_config as stream_cfg
from synthetic_shards import write_synthetic_shards as make_shards

from llm2clip_nemo.data.spec import DataSourceError
from llm2clip_nemo.data.stream import ImageTextStream

torch.set_num_threads(1)
GLOBAL = 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("slot_shards")
    make_shards(str(d), n_shards=8, per_shard=10)
    return str(d / "shard-{000000..000007}.tar")


def _streams(cfg_kw: dict, world: int, slots: int | None = None) -> list[ImageTextStream]:
    return [ImageTextStream(stream_cfg(**{**cfg_kw, "batch_size": GLOBAL // world, "slots": slots}),
                            rank=r, world_size=world) for r in range(world)]


def _global_batches(streams: list[ImageTextStream], n: int | None, workers: int = 0) -> list[list[str]]:
    """Per step, the keys of every rank's batch in rank order (what the loss gathers); n steps or to the end."""
    its = [iter(s.loader(num_workers=workers)) if workers else iter(s) for s in streams]
    out = []
    while n is None or len(out) < n:
        try:
            out.append([k for it in its for k in next(it)["key"]])
        except StopIteration:
            break
    return out


@pytest.mark.parametrize("resampled", [False, True])
def test_global_batches_do_not_depend_on_the_world_size(shards, resampled):
    """4 data slots read on 4, 2 and 1 ranks (batches of 2, 4, 8): the same global batches step by
    step; in epoch mode the whole epoch is every sample once."""
    kw = {"urls": shards, "resampled": resampled, "epochs": None if resampled else 1, "shuffle_buffer": 7}
    n = 6 if resampled else None
    ref = _global_batches(_streams(kw, 4), n)
    assert len(ref) == (6 if resampled else 10) and all(len(b) == GLOBAL for b in ref)
    if not resampled:
        assert sorted(k for b in ref for k in b) == sorted({k for b in ref for k in b}) and len(ref) * GLOBAL == 80
    for world in (2, 1):
        assert _global_batches(_streams(kw, world, slots=4), n) == ref, world


def test_two_ranks_resume_on_one_with_workers(shards):
    """2 ranks with 2 DataLoader workers each stop after 3 steps (worker 1 next); their two saved states
    restore one rank (load_state_dicts), which continues with the uninterrupted run's global batches,
    and its own state then resumes 2 ranks again."""
    kw = {"urls": shards, "resampled": False, "epochs": 2, "shuffle_buffer": 7}
    full = _global_batches(_streams(kw, 2), 14, workers=2)
    first = _streams(kw, 2)
    got = _global_batches(first, 3, workers=2)
    states = [json.loads(json.dumps(s.state_dict())) for s in first]  # what each rank's checkpoint file holds
    assert [s["hosted"] for s in states] == [[0], [1]] and {s["next_worker"] for s in states} == {1}
    (one,) = _streams(kw, 1)
    assert one.slots == 1 and one.load_state_dicts(states) is True
    assert one.slots == 2 and one.hosted == [0, 1] and one.slot_batch == 4
    got += _global_batches([one], 5, workers=2)
    st = json.loads(json.dumps(one.state_dict()))
    assert st["hosted"] == [0, 1] and st["world_size"] == 1
    again = _streams(kw, 2)
    assert all(s.load_state_dict(st) for s in again)
    got += _global_batches(again, 6, workers=2)
    assert got == full and all(len(b) == GLOBAL for b in full)


def test_version_2_state_resumes_as_one_slot(shards):
    """A state written before slots (version 2: one rank's workers) restores that rank exactly."""
    kw = {"urls": shards, "resampled": True, "shuffle_buffer": 5}
    full = _global_batches(_streams(kw, 2), 6)
    first = _streams(kw, 2)
    got = _global_batches(first, 2)
    v2 = []
    for s in first:
        st = s.state_dict()
        slot = str(s.rank)
        st.update(version=2, positions=st["positions"][slot], stats=st["stats"][slot])
        del st["slots"], st["hosted"]
        v2.append(st)
    second = _streams(kw, 2)
    for s, st in zip(second, v2):
        s.load_state_dict(st)
    assert got + _global_batches(second, 4) == full


def test_resume_that_cannot_be_exact_names_the_fix(shards):
    kw = {"urls": shards, "resampled": True}
    saved = [s.state_dict() for s in _streams(kw, 2)]
    three = ImageTextStream(stream_cfg(**kw, batch_size=4), rank=0, world_size=3)
    with pytest.raises(DataSourceError) as e:
        three.load_state_dicts(saved)
    assert str(e.value) == (
        "the checkpoint's data stream has 2 data slots, which 3 ranks cannot share evenly: run at a world size "
        "dividing 2 (1, 2) to continue it exactly, or set data.slots to a multiple of 3 to start the data stream afresh")
    with pytest.raises(DataSourceError) as e:  # a fresh stream: nothing to continue
        ImageTextStream(stream_cfg(**kw, batch_size=4, slots=3), rank=0, world_size=2)
    assert str(e.value) == ("data.slots=3 is not a multiple of the world size 2: set it to a multiple of 2, or leave "
                            "it unset (one slot per rank)")
    with pytest.raises(DataSourceError) as e:
        ImageTextStream(stream_cfg(**kw, batch_size=3, slots=2), rank=0, world_size=1)
    assert str(e.value) == ("the per-rank batch of 3 does not split into the 2 data slots each rank reads (2 slots "
                            "over 1 ranks): use a global batch divisible by 2 x the micro-batches per step "
                            "(trainer.accumulate_grad_batches)")
    (one,) = _streams(kw, 1)
    with pytest.raises(DataSourceError) as e:
        one.load_state_dict(saved[0])  # rank 0's state alone lacks slot 1
    assert str(e.value) == ("the saved stream state holds data slots [0] but rank 0 reads [0, 1]: resume from the "
                            "states of every rank (merge_states / load_state_dicts)")
    other = [dict(saved[0]), dict(saved[1], next_worker=1)]
    with pytest.raises(DataSourceError, match=r"^the saved stream states of ranks 0 and 1 differ in next_worker \(0 vs 1\)"):
        one.load_state_dicts(other)
    # an explicit new slot count is a fresh start, not an error
    fresh = ImageTextStream(stream_cfg(**kw, batch_size=8, slots=4), rank=0, world_size=1)
    assert fresh.load_state_dicts(saved) is False and fresh.slots == 4
    assert _global_batches([fresh], 1) == _global_batches(_streams(kw, 1, slots=4), 1)
