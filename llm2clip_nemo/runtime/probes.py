"""Run-time probes for optional accelerators. Nothing here is an install requirement.

A broken Transformer Engine install raises RuntimeError or OSError (missing CUDA libraries),
not only ImportError, so every probe treats all three as "absent" and remembers why.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

import torch

_ABSENT = (ImportError, RuntimeError, OSError)


@dataclass(frozen=True)
class Probe:
    available: bool
    reason: str
    """Version string when available, else why not (the exception, shortened)."""


def probe_module(name: str, importer=importlib.import_module) -> Probe:
    """Import `name`; report absent on ImportError/RuntimeError/OSError."""
    try:
        mod = importer(name)
    except _ABSENT as e:  # a broken install is as absent as a missing one
        return Probe(False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])
    return Probe(True, str(getattr(mod, "__version__", "unknown version")))


@functools.cache
def transformer_engine() -> Probe:
    """TE is usable only with CUDA present and `transformer_engine.pytorch` importable."""
    if not torch.cuda.is_available():
        return Probe(False, "CUDA is not available")
    return probe_module("transformer_engine.pytorch")


@functools.cache
def apex() -> Probe:
    """NVIDIA apex (not the unrelated PyPI `apex`): recognised by `apex.normalization`."""
    return probe_module("apex.normalization")


def fp8_capable() -> Probe:
    """FP8 needs TE and a GPU of compute capability >= 8.9 (Ada/Hopper)."""
    te = transformer_engine()
    if not te.available:
        return Probe(False, f"Transformer Engine unusable ({te.reason})")
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name()
        return Probe(False, f"{name} (sm_{major}{minor}) has no FP8 tensor cores; needs sm_89 or sm_90")
    return Probe(True, te.reason)
