"""runtime/: the megatron-core CPU layer, accelerator probes, seeding (the parallel layout and its TP
check: test_layout.py)."""
from __future__ import annotations

import pytest
import torch

from llm2clip_nemo.runtime import megatron_compat, probes, seed_everything


def test_cpu_layer_patches_exactly_two_things_and_restores():
    from megatron.core.tensor_parallel import random as mrandom

    megatron_compat.uninstall()
    original = torch.cuda.current_device
    assert megatron_compat.install() is True
    assert torch.cuda.current_device() == "cpu"
    tracker = mrandom.get_cuda_rng_tracker()
    assert isinstance(tracker, megatron_compat.CpuRNGStatesTracker)
    tracker.add("model-parallel-rng", 1234)
    before = torch.get_rng_state()
    with tracker.fork():  # a no-op on CPU: the CPU generator is untouched
        pass
    assert torch.equal(before, torch.get_rng_state())
    megatron_compat.uninstall()
    assert torch.cuda.current_device is original
    assert not megatron_compat.active()
    megatron_compat.install()


def test_cpu_layer_is_a_no_op_with_cuda(monkeypatch):
    megatron_compat.uninstall()
    original = torch.cuda.current_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        assert megatron_compat.install() is False
        assert torch.cuda.current_device is original
    finally:
        monkeypatch.undo()
        megatron_compat.install()


@pytest.mark.parametrize("exc", [ImportError("no module"), RuntimeError("CUDA driver too old"),
                                 OSError("libcudart.so.12: cannot open shared object file")])
def test_probe_treats_broken_installs_as_absent(exc):
    def importer(name):
        raise exc

    p = probes.probe_module("transformer_engine.pytorch", importer=importer)
    assert not p.available and type(exc).__name__ in p.reason


def test_probes_on_this_machine_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectation")
    assert probes.transformer_engine() == probes.Probe(False, "CUDA is not available")
    assert not probes.fp8_capable().available


def test_seed_everything_repeats():
    seed_everything(7)
    a = (torch.rand(3), __import__("numpy").random.rand(2).tolist(), __import__("random").random())
    seed_everything(7)
    b = (torch.rand(3), __import__("numpy").random.rand(2).tolist(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
