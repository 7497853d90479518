"""The megatron-core CPU compatibility layer: exactly what megatron-core needs to run on CPU.

megatron-core is written for CUDA. On a CPU-only machine (dev laptops, CI, the demo) two things
break, and this module patches exactly those two, nothing else:

1. `torch.cuda.current_device()` is used as a `device=` argument when RoPE frequencies and the
   attention memory buffers are allocated. Without CUDA it raises; we make it return "cpu".
2. The model-parallel RNG tracker forks the CUDA generator in `add`/`fork` (used around weight
   init and dropout of TP layers). On CPU we install a tracker whose `add`/`fork` do nothing: the
   CPU generator seeded with `torch.manual_seed` is used instead (see `seed.seed_everything`).

Both patches are installed only when CUDA is unavailable; on a GPU `install()` is a no-op.
`install()` is idempotent and `uninstall()` restores the originals (used by tests).
"""
from __future__ import annotations

import contextlib

import torch

_state: dict = {}


class CpuRNGStatesTracker:
    """Drop-in for megatron's CudaRNGStatesTracker with CPU semantics: no CUDA generators."""

    def __init__(self):
        self.states_: dict = {}
        self.seeds_: set = set()

    def is_initialized(self) -> bool:
        return True

    def reset(self):
        self.states_, self.seeds_ = {}, set()

    def get_states(self):
        return dict(self.states_)

    def set_states(self, states):
        self.states_ = dict(states)

    def add(self, name, seed):
        self.states_[name] = seed
        self.seeds_.add(seed)

    def fork(self, name=None):
        return contextlib.nullcontext()


def _cpu_current_device() -> str:
    return "cpu"


def needed() -> bool:
    return not torch.cuda.is_available()


def install() -> bool:
    """Install the two CPU patches if CUDA is absent. Returns whether they are active."""
    if not needed():
        return False
    if _state:
        return True
    from megatron.core.tensor_parallel import random as mrandom

    _state["current_device"] = torch.cuda.current_device
    _state["tracker"] = (mrandom._CUDA_RNG_STATE_TRACKER, mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED)
    torch.cuda.current_device = _cpu_current_device
    mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    return True


def uninstall() -> None:
    """Restore megatron-core and torch.cuda to their unpatched state."""
    if not _state:
        return
    from megatron.core.tensor_parallel import random as mrandom

    torch.cuda.current_device = _state.pop("current_device")
    mrandom._CUDA_RNG_STATE_TRACKER, mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = _state.pop("tracker")


def active() -> bool:
    return bool(_state)
