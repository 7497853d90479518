"""Runtime: process groups, parallel state, hardware probes, the megatron-core CPU layer, seeding.

The only package that creates process groups or probes hardware.
"""
from .dist_env import DistEnv, expand_nodelist
from .parallel import ParallelGroups, destroy_parallel, init_distributed, init_parallel, validate_tp
from .seed import seed_everything

__all__ = [
    "DistEnv",
    "ParallelGroups",
    "destroy_parallel",
    "expand_nodelist",
    "init_distributed",
    "init_parallel",
    "seed_everything",
    "validate_tp",
]
