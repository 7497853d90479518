"""Runtime: process groups, the parallel layout, hardware probes, the megatron-core CPU layer, seeding.

The only package that creates process groups, reads torch.distributed's default group or
megatron's parallel state, or probes hardware.
"""
from .dist_env import DistEnv, expand_nodelist
from .layout import (
    LayoutError,
    ParallelLayout,
    check_tp,
    current_layout,
    destroy_parallel,
    init_parallel,
    process_count,
    process_rank,
    processes_per_node,
)
from .parallel import init_distributed
from .seed import seed_everything

__all__ = [
    "DistEnv",
    "LayoutError",
    "ParallelLayout",
    "check_tp",
    "current_layout",
    "destroy_parallel",
    "expand_nodelist",
    "init_distributed",
    "init_parallel",
    "process_count",
    "process_rank",
    "processes_per_node",
    "seed_everything",
]
