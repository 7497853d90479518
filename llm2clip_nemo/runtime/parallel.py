"""torch.distributed from the launcher's variables (the default process group). The groups built
on it, and the value model code receives, are in `layout.py`."""
from __future__ import annotations

import datetime
import socket

import torch
import torch.distributed as dist

from .dist_env import DistEnv


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
