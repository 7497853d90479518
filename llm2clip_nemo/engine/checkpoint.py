"""Training checkpoints that do not depend on the parallel layout: torch.distributed.checkpoint (DCP).

One checkpoint is one directory:

    .metadata, __R_0.distcp   DCP: {"model", "optim", and one entry per extra module (e.g. "ema")},
                              every rank writing its own shards; written last, so `.metadata`
                              (renamed into place by DCP) marks the weights complete
    train_state.json          rank 0: {"format", "step", "world_size", "extras"}; `extras` is the
                              caller's JSON-able dict (e.g. the data position)
    rank_00000.pt ...         each rank: its RNG state (torch CPU/CUDA, Python, NumPy) and the
                              caller's per-rank `rank_state`; torch.save'd, read with weights_only

State dicts come from `torch.distributed.checkpoint.state_dict.get_state_dict`, which names every
tensor by its parameter FQN whatever the wrapping (DDP/replicate, FSDP2 DTensor shards, compile,
activation checkpointing): a checkpoint written under `ddp` loads under `fsdp2` and the reverse, and
DCP reshards it to another world size (2 ranks -> 1 included). `read_full_state_dict` reads one
back into plain tensors in one process with no process group (export, evaluation).

What is not carried across a change of world size: the RNG (a resumed run keeps its fresh RNG
streams) and `LoadedCheckpoint.rank_state` (None); `read_rank_states` gives the caller every saved
rank's `rank_state` to re-split (e.g. the data stream's slots, `data.stream_state.merge_states`).
"""
from __future__ import annotations

import json
import random
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

FORMAT = 1
TRAIN_STATE = "train_state.json"
RESERVED = ("model", "optim")


class TrainingCheckpointError(ValueError):
    """A checkpoint directory that cannot be read for what is asked: the message names the path and the fix."""


def rank_file(path: str | Path, rank: int) -> Path:
    """The per-rank file (RNG, `rank_state`) of `rank` in checkpoint directory `path`."""
    return Path(path) / f"rank_{rank:05d}.pt"


def is_complete(path: str | Path) -> bool:
    """Whether `path` holds a finished checkpoint (DCP metadata and the train state both written)."""
    p = Path(path)
    return (p / ".metadata").is_file() and (p / TRAIN_STATE).is_file()


# ---- RNG -----------------------------------------------------------------------------------------

def rng_state() -> dict:
    """This process's RNG states: torch CPU (and every CUDA device), Python `random`, NumPy legacy."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [name, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore an `rng_state()` (CUDA states only where CUDA is available here)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- module state (model, EMA, ...) as DCP-friendly Stateful objects -------------------------------

class _ModuleState:
    """A module's state dict by FQN, whatever its wrapping (DCP `Stateful`)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def state_dict(self) -> dict:
        return get_model_state_dict(self.module)

    def load_state_dict(self, sd: dict) -> None:
        set_model_state_dict(self.module, sd)


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None, modules: Mapping[str, nn.Module] | None) -> dict:
    """{"model", "optim"?, *modules} as state dicts in the current layout (DTensor shards under fsdp2)."""
    for name in modules or {}:
        if name in RESERVED:
            raise ValueError(f"extra module name {name!r} is reserved ({', '.join(RESERVED)}): pick another name.")
    if optimizer is not None:
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optim": osd}
    else:
        state = {"model": get_model_state_dict(model)}
    for name, m in (modules or {}).items():
        state[name] = get_model_state_dict(m) if isinstance(m, nn.Module) else m.state_dict()
    return state


@contextmanager
def _one_process_quiet():
    """Context for DCP calls made in one process with no process group (a 1-process engine, export):
    DCP then warns that it assumes one process, which is the intent; other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _rank_world(group) -> tuple[int, int]:
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


_ASYNC_GROUPS: dict[tuple[int, ...], tuple[object, object]] = {}


def _async_group(group):
    """A gloo group over the ranks of `group`, created once (collectively) and reused while the same
    training group lives: the background writer's collectives must not share a group with the
    training step's (a mismatch aborts gloo)."""
    if not dist.is_initialized():
        return None
    if group is None:
        from .parallelize import layout_dp_group

        group = layout_dp_group()
    ranks = tuple(dist.get_process_group_ranks(group))
    owner, pg = _ASYNC_GROUPS.get(ranks, (None, None))
    if owner is not group:  # first use, or torch.distributed was re-initialised since (a new group object)
        pg = dist.new_group(list(ranks), backend="gloo")
        _ASYNC_GROUPS[ranks] = (group, pg)
    return pg


@dataclass
class PendingSave:
    """A checkpoint being written in the background (`save_checkpoint(..., async_save=True)`).

    `wait()` blocks until this rank's shards and the metadata are on disk; call it before the next
    save and before the process exits. A synchronous save returns one that is already done."""

    path: Path
    future: object = None

    def wait(self) -> Path:
        if self.future is not None:
            self.future.result()
            self.future = None
        return self.path


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, *, step: int,
                    extras: dict | None = None, rank_state: dict | None = None,
                    modules: Mapping[str, object] | None = None, async_save: bool = False,
                    group=None) -> PendingSave:
    """Write a checkpoint of `model`, `optimizer` and `modules` (e.g. {"ema": ema_net}) to directory `path`.
    A `modules` entry is an nn.Module or any object with `state_dict()` -> {name: tensor} of its live
    tensors and `load_state_dict(sd)` (a DCP `Stateful`, e.g. the engine's EMA shadows).

    Collective: every rank of `group` (None: the default group) calls it with the same `path`.
    `extras` (JSON-able: step counters, the data position) is written by rank 0; `rank_state`
    (torch-saveable, this rank's own, e.g. a per-rank stream position) and this rank's RNG go to
    `rank_NNNNN.pt`. These small files are written synchronously; with `async_save=True` the tensors
    are first copied to CPU memory (the call returns once they are, so training can move on and
    change the parameters) and written by a background thread (`dcp.async_save`) whose collectives
    run on a gloo group of their own (created at the first async save: every rank of `group` must
    make that first call together): call `.wait()` on the result.
    Raises ValueError if `path` already holds a complete checkpoint (never overwritten in place).
    """
    path = Path(path)
    rank, world = _rank_world(group)
    if is_complete(path):
        raise ValueError(f"{path} already holds a checkpoint: save each step to a new directory.")
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"rng": rng_state(), "rank_state": rank_state, "step": int(step)}, rank_file(path, rank))
    if rank == 0:
        meta = {"format": FORMAT, "step": int(step), "world_size": world, "extras": extras or {}}
        (path / TRAIN_STATE).write_text(json.dumps(meta, indent=1))
    state = _state(model, optimizer, modules)
    if async_save:
        return PendingSave(path, dcp.async_save(state, checkpoint_id=str(path), process_group=_async_group(group)))
    with _one_process_quiet():
        dcp.save(state, checkpoint_id=str(path), process_group=group, no_dist=not dist.is_initialized())
    return PendingSave(path)


@dataclass
class LoadedCheckpoint:
    """What `load_checkpoint` read besides the tensors it loaded in place."""

    step: int
    extras: dict
    """rank 0's `extras` as saved (every rank gets the same dict)."""
    saved_world_size: int
    rank_state: dict | None
    """this rank's `rank_state` as saved; None when the world size changed (and then the RNG was not
    restored either)."""


def read_train_state(path: str | Path) -> dict:
    """train_state.json of a checkpoint. Raises TrainingCheckpointError if `path` is not a complete checkpoint."""
    p = Path(path)
    if not is_complete(p):
        raise TrainingCheckpointError(f"{p} is not a complete checkpoint (no .metadata or {TRAIN_STATE}): point at a "
                              "directory written by save_checkpoint, or an earlier step if this one was interrupted.")
    meta = json.loads((p / TRAIN_STATE).read_text())
    if meta.get("format") != FORMAT:
        raise TrainingCheckpointError(f"{p / TRAIN_STATE} has format {meta.get('format')}, this code reads {FORMAT}: "
                              "use the llm2clip_nemo version that wrote it.")
    return meta


def read_rank_states(path: str | Path, ranks: list[int] | None = None) -> list:
    """The saved `rank_state` of `ranks` (None: every saved rank), in that order (small per-rank files;
    no process group needed). Raises TrainingCheckpointError when `path` is not a complete checkpoint, a rank file
    is missing, unreadable or of another step than the checkpoint."""
    meta = read_train_state(path)
    out = []
    for r in range(int(meta["world_size"])) if ranks is None else ranks:
        f = rank_file(path, r)
        if not f.is_file():
            raise TrainingCheckpointError(f"{f} is missing: the checkpoint {path} was written by {meta['world_size']} ranks "
                                          "and each leaves its file; copy the whole directory or use an earlier step.")
        try:
            saved = torch.load(f, weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated or not a torch file: name it, whatever torch raised
            raise TrainingCheckpointError(f"{f} cannot be read as a torch file ({type(e).__name__}): it is "
                                          "damaged; copy the whole directory again or use an earlier step.") from None
        if saved.get("step", meta["step"]) != meta["step"]:  # files before "step" was saved are not checked
            raise TrainingCheckpointError(f"{f} is of step {saved['step']} but {path} holds step {meta['step']}: the "
                                          "directory mixes files of two checkpoints; copy the whole directory of one "
                                          "step, or use an earlier step.")
        out.append(saved["rank_state"])
    return out


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    modules: Mapping[str, nn.Module] | None = None, group=None) -> LoadedCheckpoint:
    """Load `path` into `model`, `optimizer` (if given) and `modules`, in place, in their current layout.

    Collective over `group`. The model must already be parallelised as it will train (and the
    optimizer built over its parameters): DCP reads each rank's shards, whatever layout and world
    size wrote them. An optimizer with no state yet gets it initialised first (a zero-gradient step
    at lr 0, `get_state_dict`'s way) so there is state to load into. The RNG and `rank_state` are
    restored only when the world size is the one that saved.
    Raises TrainingCheckpointError for a missing/incomplete checkpoint, one lacking a tensor file its
    metadata lists, or one lacking a requested part.
    """
    meta = read_train_state(path)
    rank, world = _rank_world(group)
    state = _state(model, optimizer, modules)
    dcp_meta = dcp.FileSystemReader(str(path)).read_metadata()
    stored = dcp_meta.state_dict_metadata
    gone = sorted({s.relative_path for s in (dcp_meta.storage_data or {}).values()} - {f.name for f in Path(path).iterdir()})
    if gone:  # every rank sees the same files: all refuse here, before the collective load
        raise TrainingCheckpointError(f"{path} lacks {', '.join(gone)} (tensor files its .metadata lists): copy the "
                                      "whole directory or use an earlier step.")
    for name in state:
        if not any(k.startswith(name + ".") for k in stored):
            raise TrainingCheckpointError(f"{path} holds no {name!r} state (it has {sorted({k.split('.')[0] for k in stored})}): "
                                  f"load without {name!r}, or from a checkpoint saved with it.")
    with _one_process_quiet():
        dcp.load(state, checkpoint_id=str(path), process_group=group, no_dist=not dist.is_initialized())
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        set_model_state_dict(model, state["model"])
    for name, m in (modules or {}).items():
        if isinstance(m, nn.Module):
            set_model_state_dict(m, state[name])
        else:
            m.load_state_dict(state[name])
    rank_state = None
    if meta["world_size"] == world:
        saved = torch.load(rank_file(path, rank), weights_only=True)
        set_rng_state(saved["rng"])
        rank_state = saved["rank_state"]
    return LoadedCheckpoint(step=meta["step"], extras=meta["extras"], saved_world_size=meta["world_size"],
                            rank_state=rank_state)


def read_full_state_dict(path: str | Path, key: str = "model") -> dict[str, torch.Tensor]:
    """One part of a checkpoint (`key`: "model", or an extra module such as "ema") as a plain full
    state dict {FQN: tensor} on CPU, read in this process alone (no process group needed), whatever
    layout and world size wrote it. Non-tensor entries (megatron's `_extra_state`) are included as saved.
    Raises TrainingCheckpointError when `path` is not a complete checkpoint or has no `key` part."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    read_train_state(path)
    stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    prefix = key + "."
    wanted = {k: m for k, m in stored.items() if k.startswith(prefix)}
    if not wanted:
        raise TrainingCheckpointError(f"{path} holds no {key!r} state (it has {sorted({k.split('.')[0] for k in stored})}): "
                              "pass one of those as key.")
    flat = {k: torch.empty(m.size, dtype=m.properties.dtype) if isinstance(m, TensorStorageMetadata) else None
            for k, m in wanted.items()}
    with _one_process_quiet():
        dcp.load(flat, checkpoint_id=str(path), no_dist=True)
    return {k[len(prefix):]: v for k, v in flat.items()}
