"""The parallel layout of a run, built once per process and passed explicitly to model code.

Layout (DESIGN, "Parallel layout"):
  * the vision tower and adapter are data-parallel over ALL ranks (`vision_dp_group`); the ViT is
    never tensor-parallel, so it gets its own megatron `ProcessGroupCollection` whose tensor-,
    context- and pipeline-parallel groups are this rank alone (`vision_pg_collection`);
  * the frozen LLM teacher is tensor-parallel inside groups of t consecutive ranks (`tp_group`,
    megatron's `initialize_model_parallel(t)`), data-parallel across the groups (`dp_group`: the
    ranks holding the same shard), with megatron's collection `pg_collection`.
t must be >= 1, divide the world size and divide the processes (GPUs) per node, so a TP group never
crosses a node; the launcher's variables say how many processes share a node. A run checks that
rule here and nowhere else (`check_tp`; config validators only ask t >= 1), before any rendezvous,
so every rank fails alike; `doctor --tensor-parallel t` uses the same check.

Stage 1 (caption-contrastive, no megatron) gets the same value with t=1 and no collections.
"""
from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import megatron_compat
from .dist_env import DistEnv
from .parallel import init_distributed

TP_FIELD = "model.teacher.tensor_parallel"


class LayoutError(ValueError):
    """A tensor-parallel size this job cannot run with (bad user input: recipes exit 2)."""


@dataclass(frozen=True)
class ParallelLayout:
    """Every process group model code uses, passed in explicitly (never read from globals)."""

    rank: int
    """Global rank, 0..world_size-1."""
    world_size: int
    """Number of processes in the job."""
    tp_rank: int
    """This rank's position in its teacher tensor-parallel group, 0..tp_size-1."""
    tp_size: int
    """Teacher tensor-parallel size t (`model.teacher.tensor_parallel`)."""
    dp_rank: int
    """Index of this rank's teacher TP group, 0..dp_size-1."""
    dp_size: int
    """Number of teacher TP groups: world_size / t."""
    tp_group: object
    """torch ProcessGroup of the t consecutive ranks sharing one teacher."""
    dp_group: object
    """torch ProcessGroup of the ranks holding the same teacher shard (teacher data parallelism)."""
    vision_dp_group: object
    """torch ProcessGroup of all ranks: the vision tower's (and stage 1's) data-parallel group."""
    pg_collection: object
    """megatron ProcessGroupCollection for the teacher's modules (None in stage 1)."""
    vision_pg_collection: object
    """megatron ProcessGroupCollection for the ViT: tp/cp/pp groups of this rank alone, dp = all
    ranks (None in stage 1)."""
    device: torch.device
    """Device of this rank: its CUDA device, or CPU."""

    @property
    def backend(self) -> str:
        return dist.get_backend() if dist.is_initialized() else "none"


_BUILT: list[ParallelLayout] = []  # the process's layout (at most one), kept by init_parallel


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_tp(tp: int, world_size: int, per_node: int | None = None, field: str = TP_FIELD,
             per_node_source: str = "") -> None:
    """Raise LayoutError unless t=`tp` is >= 1, divides `world_size` and divides `per_node` (the
    processes per node; None = unknown, not checked). Pure: no environment, no process groups."""
    if tp < 1:
        raise LayoutError(f"{field}={tp} must be >= 1: set it to 1 (no tensor parallelism) or a divisor of "
                          "the GPUs per node.")
    if world_size % tp:
        raise LayoutError(f"{field}={tp} does not divide the world size {world_size}: set it to one of "
                          f"{divisors(world_size)} or launch a multiple of {tp} processes.")
    if per_node and per_node % tp:
        where = f" ({per_node_source})" if per_node_source else ""
        raise LayoutError(f"{field}={tp} does not divide the {per_node} GPUs per node{where}: a tensor-parallel "
                          f"group would cross nodes. Set it to one of {divisors(per_node)} or launch "
                          f"{tp} GPUs per node.")


_TASKS = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def _slurm_counts(value: str) -> list[int]:
    """'8(x2),4' -> [8, 8, 4] (SLURM's compressed tasks-per-node list)."""
    counts = []
    for part in value.split(","):
        m = _TASKS.match(part.strip())
        if m is None:
            return []
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def processes_per_node(env: DistEnv, environ: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """(processes per node, the variable it came from) under the launcher `env` was read from.

    torchrun: LOCAL_WORLD_SIZE; SLURM: SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE /
    SLURM_NTASKS_PER_NODE (with uneven nodes, the gcd of the counts: t must divide each);
    submitit's local executor: every rank is on this node. (None, "") when the launcher does not
    say (a single process, or RANK/WORLD_SIZE set by hand): then only the world size is checked.
    """
    environ = os.environ if environ is None else environ
    if env.launcher == "torchrun":
        v = environ.get("LOCAL_WORLD_SIZE", "")
        return (int(v), f"LOCAL_WORLD_SIZE={v}") if v.isdigit() else (None, "")
    if env.launcher == "slurm":
        for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
            counts = _slurm_counts(environ.get(name, ""))
            if counts:
                return math.gcd(*counts), f"{name}={environ[name]}"
        return None, ""
    if env.launcher == "submitit-local":
        return env.world_size, f"SUBMITIT_LOCAL_NTASKS={env.world_size}"
    return None, ""


def process_rank() -> int:
    """This process's rank in the job (torch.distributed's default group), 0 when not distributed."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def process_count() -> int:
    """The processes of the job (torch.distributed's default group), 1 when not distributed."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def current_layout() -> ParallelLayout | None:
    """The layout `init_parallel` built in this process, if it is still live."""
    return _BUILT[0] if _BUILT and _live(_BUILT[0], megatron=False) else None


def _live(layout: ParallelLayout, megatron: bool) -> bool:
    """Its groups still exist: the same default group, and (megatron) the same megatron groups."""
    if not dist.is_initialized() or dist.group.WORLD is not layout.vision_dp_group:
        return False
    if not megatron:
        return True
    from megatron.core import parallel_state as ps

    return (layout.pg_collection is not None and ps.model_parallel_is_initialized()
            and ps.get_tensor_model_parallel_group() is layout.tp_group)


def init_parallel(tp_size: int = 1, *, field: str = TP_FIELD, megatron: bool = True, env: DistEnv | None = None,
                  environ: Mapping[str, str] | None = None, backend: str | None = None) -> ParallelLayout:
    """The process's ParallelLayout for teacher TP size `tp_size`: built on the first call (torch
    distributed from the launcher's variables, megatron parallel state, the ViT's own groups),
    the same value on later calls.

    `field` names the setting `tp_size` came from, for the error. `megatron=False` (stage 1) builds
    no megatron state and needs tp_size=1. Raises LayoutError (checked before any rendezvous) when
    tp_size is < 1, does not divide the world or the processes per node; RuntimeError when this
    process already runs another TP size (call `destroy_parallel()` first).
    """
    env = env or DistEnv.from_environ(environ)
    # The launcher's world; a process group someone else started (Lightning) when it says none.
    world = env.world_size if env.distributed or not dist.is_initialized() else dist.get_world_size()
    per_node, source = processes_per_node(env, environ)
    check_tp(tp_size, world, per_node, field, source)
    if not megatron and tp_size != 1:
        raise LayoutError(f"{field}={tp_size}: this stage runs without megatron and has no tensor parallelism; set 1.")
    if _BUILT and _live(_BUILT[0], megatron):
        if _BUILT[0].tp_size != tp_size:
            raise RuntimeError(f"this process already runs tensor_parallel={_BUILT[0].tp_size}, asked for {tp_size}: "
                               "call runtime.destroy_parallel() first.")
        return _BUILT[0]
    _BUILT.clear()
    if megatron:
        megatron_compat.install()
    init_distributed(env, backend)
    layout = _build(tp_size, megatron)
    _BUILT.append(layout)
    return layout


def _build(tp_size: int, megatron: bool) -> ParallelLayout:
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    # This rank alone: the ViT's tensor/context/pipeline group (only its own rank creates it).
    alone = dist.new_group([rank], use_local_synchronization=True)
    everyone = dist.group.WORLD
    if not megatron:
        return ParallelLayout(rank=rank, world_size=world, tp_rank=0, tp_size=1, dp_rank=rank, dp_size=world,
                              tp_group=alone, dp_group=everyone, vision_dp_group=everyone, pg_collection=None,
                              vision_pg_collection=None, device=device)
    from megatron.core import parallel_state as ps
    from megatron.core.process_groups_config import ProcessGroupCollection

    if ps.model_parallel_is_initialized() and ps.get_tensor_model_parallel_world_size() != tp_size:
        raise RuntimeError(f"megatron parallel state already initialised with tensor_parallel="
                           f"{ps.get_tensor_model_parallel_world_size()}, asked for {tp_size}: call "
                           "runtime.destroy_parallel() first.")
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=tp_size, create_gloo_process_groups=False)
    vision = ProcessGroupCollection(tp=alone, cp=alone, tp_cp=alone, pp=alone, mp=alone, dp=everyone,
                                    dp_cp=everyone, tp_dp_cp=everyone)
    return ParallelLayout(
        rank=rank, world_size=world,
        tp_rank=ps.get_tensor_model_parallel_rank(), tp_size=tp_size,
        dp_rank=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(),
        tp_group=ps.get_tensor_model_parallel_group(), dp_group=ps.get_data_parallel_group(),
        vision_dp_group=everyone,
        pg_collection=ProcessGroupCollection.use_mpu_process_groups(), vision_pg_collection=vision,
        device=device,
    )


def destroy_parallel() -> None:
    """Tear down the layout, megatron parallel state and torch.distributed (tests, end of a run)."""
    _BUILT.clear()
    ps = sys.modules.get("megatron.core.parallel_state")  # stage 1 never imports megatron
    if ps is not None and ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
