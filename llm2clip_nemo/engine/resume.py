"""The data position of a sharded checkpoint, restored before the collective load of its tensors.

Every rank first takes its part of the checkpoint's per-rank files (`checkpoint.read_rank_states`):
at the world size that saved, its own data position; at another, every saved rank's, handed to the
data source's `load_state_dicts` (the training stream re-splits its data slots). Then the ranks agree
(`agree_before_load`): if one failed (a missing, damaged or foreign rank file, a position the data
source refuses), every rank raises before the collective load that the failing one would never join.
"""
from __future__ import annotations

from pathlib import Path

import torch.distributed as dist


def restore_data_position(data, path: str | Path, group) -> tuple[bool, bool]:
    """Give `data` (a source with `load_state_dict`, optionally `load_state_dicts`; or None) its position
    from checkpoint directory `path`. Returns (same world size as the one that saved, position
    restored). A source's `load_state_dict(s)` returning False (it starts afresh) or a checkpoint without
    a position count as not restored. Collective over `group` (one all_gather_object). Raises the data
    source's own errors (e.g. DataSourceError) and TrainingCheckpointError for a missing rank file or one
    of another step; when only some ranks fail, the others raise TrainingCheckpointError with the first
    failing rank's message."""
    from .checkpoint import read_rank_states, read_train_state

    world = dist.get_world_size(group) if dist.is_initialized() else 1
    same = read_train_state(path)["world_size"] == world
    restored, error = False, None
    try:
        if data is not None:
            if same:
                rank = dist.get_rank(group) if dist.is_initialized() else 0
                states = [read_rank_states(path, [rank])[0]["data"]]
            else:
                states = [s["data"] for s in read_rank_states(path)] if hasattr(data, "load_state_dicts") else [None]
            if all(s is not None for s in states):
                got = data.load_state_dict(states[0]) if same else data.load_state_dicts(states)
                restored = got is not False
    except Exception as e:  # noqa: BLE001 - every rank must learn of it before the collective load
        error = e
    agree_before_load(error, group)
    return same, restored


def agree_before_load(error: BaseException | None, group) -> None:
    """Raise `error` (this rank's failure to take its part of a checkpoint) here, and on every other rank
    of `group` a TrainingCheckpointError carrying the first failing rank's message, so that no rank enters
    the collective load that a peer has left (it would wait forever). Collective over `group` when more
    than one rank runs; returns when no rank failed."""
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        msgs: list = [None] * dist.get_world_size(group)
        dist.all_gather_object(msgs, None if error is None else str(error), group=group)
        first = next((m for m in msgs if m is not None), None)
        if error is None and first is not None:
            from .checkpoint import TrainingCheckpointError

            raise TrainingCheckpointError(first)
    if error is not None:
        raise error
