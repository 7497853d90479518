"""Process groups: torch.distributed from the launcher's variables, megatron parallel state with
tensor-parallel size t, and the explicit `ParallelGroups` value that model code receives.

Layout (DESIGN, "Parallel layout"): vision tower and adapter data-parallel over all ranks; the
frozen LLM teacher tensor-parallel inside groups of t consecutive ranks (t divides GPUs per node
so a TP group never crosses a node).
"""
from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import megatron_compat
from .dist_env import DistEnv


@dataclass(frozen=True)
class ParallelGroups:
    """Everything model code needs to know about parallelism, passed in explicitly."""

    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    dp_rank: int
    dp_size: int
    tp_group: object
    """torch ProcessGroup of this rank's tensor-parallel group (None when not distributed)."""
    dp_group: object
    """torch ProcessGroup over ranks holding the same TP shard (None when not distributed)."""
    world_group: object
    """The default group: the vision tower's data-parallel group (all ranks)."""
    pg_collection: object
    """megatron.core ProcessGroupCollection handed to megatron modules."""
    device: torch.device

    @property
    def backend(self) -> str:
        return dist.get_backend() if dist.is_initialized() else "none"


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(env: DistEnv | None = None, backend: str | None = None, timeout_min: int = 30) -> DistEnv:
    """Initialise torch.distributed from `env` (default: the launcher's variables).

    A single process still gets a (1-rank) process group, because megatron-core's parallel
    state requires one; it rendezvouses on a free local port.
    """
    env = env or DistEnv.from_environ()
    if dist.is_initialized():
        return env
    backend = backend or default_backend()
    port = env.master_port if env.distributed else free_port()
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(minutes=timeout_min),
    )
    return env


def validate_tp(tp_size: int, world_size: int, gpus_per_node: int | None = None) -> None:
    if tp_size < 1:
        raise ValueError(f"tensor_parallel={tp_size} must be >= 1.")
    if world_size % tp_size:
        raise ValueError(
            f"tensor_parallel={tp_size} does not divide the world size {world_size}: "
            f"launch a multiple of {tp_size} processes or choose a divisor of {world_size}."
        )
    if gpus_per_node and gpus_per_node % tp_size:
        raise ValueError(
            f"tensor_parallel={tp_size} does not divide the {gpus_per_node} GPUs per node: a TP group "
            f"would cross nodes. Choose a divisor of {gpus_per_node}."
        )


def init_parallel(tp_size: int = 1, env: DistEnv | None = None, backend: str | None = None) -> ParallelGroups:
    """Initialise torch.distributed and megatron parallel state; return the explicit groups."""
    from megatron.core import parallel_state as ps
    from megatron.core.process_groups_config import ProcessGroupCollection

    megatron_compat.install()
    env = init_distributed(env, backend)
    world = dist.get_world_size()
    validate_tp(tp_size, world)
    if ps.model_parallel_is_initialized():
        if ps.get_tensor_model_parallel_world_size() != tp_size:
            raise RuntimeError(
                f"megatron parallel state already initialised with tensor_parallel="
                f"{ps.get_tensor_model_parallel_world_size()}, asked for {tp_size}: call "
                "destroy_parallel() first."
            )
    else:
        ps.initialize_model_parallel(tensor_model_parallel_size=tp_size, create_gloo_process_groups=False)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return ParallelGroups(
        rank=dist.get_rank(),
        world_size=world,
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=tp_size,
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        tp_group=ps.get_tensor_model_parallel_group(),
        dp_group=ps.get_data_parallel_group(),
        world_group=dist.group.WORLD,
        pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
        device=device,
    )


def destroy_parallel() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
