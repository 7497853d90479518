"""Throughput accounting of a training run: samples/s, samples/s per device, achieved TFLOP/s and MFU.

MFU (model FLOPs utilisation, Chowdhery et al. 2022, "PaLM", appendix B) = achieved model FLOP/s per
device / the device's peak FLOP/s. Model FLOPs per sample come from `runtime.flops`
(`train_flops_per_sample`), peaks from `runtime.flops.peak_flops`.
"""
from __future__ import annotations

from .flops import peak_flops, train_flops_per_sample


class ThroughputMeter:
    """Turns (samples, seconds) intervals into rates.

    flops_per_sample: model FLOPs of one training sample (forward + backward), e.g.
        `train_flops_per_sample(vision_cfg, adapter_cfg)`.
    peak_flops: peak FLOP/s of ONE device, or None when unknown (MFU is then None).
    world_size: the devices the samples are spread over: every rank of a stage-2 run (the vision
        tower and adapter are data-parallel over all ranks; the teacher's TP groups do not change it).
    Samples passed to `update` are those of all devices together (the global batch x steps).
    """

    def __init__(self, flops_per_sample: float, peak_flops: float | None, world_size: int = 1) -> None:
        if flops_per_sample <= 0:
            raise ValueError(f"flops_per_sample={flops_per_sample} must be > 0")
        if peak_flops is not None and peak_flops <= 0:
            raise ValueError(f"peak_flops={peak_flops} must be > 0 FLOP/s (or None when unknown)")
        if world_size < 1:
            raise ValueError(f"world_size={world_size} must be >= 1")
        self.flops_per_sample = float(flops_per_sample)
        self.peak_flops = None if peak_flops is None else float(peak_flops)
        self.world_size = int(world_size)
        self.samples = 0
        self.seconds = 0.0

    def rates(self, samples: int, seconds: float) -> dict:
        """The rates of `samples` (over ALL devices) done in `seconds` of wall time, without recording
        them: {samples_per_s, samples_per_s_per_device, tflops (achieved model TFLOP/s per device),
        mfu (0..1, None when the peak is unknown)}. Raises ValueError for seconds <= 0 or samples < 0."""
        if seconds <= 0:
            raise ValueError(f"seconds={seconds} must be > 0")
        if samples < 0:
            raise ValueError(f"samples={samples} must be >= 0")
        per_s = samples / seconds
        per_device = per_s / self.world_size
        achieved = per_device * self.flops_per_sample
        return {"samples_per_s": per_s, "samples_per_s_per_device": per_device, "tflops": achieved / 1e12,
                "mfu": None if self.peak_flops is None else achieved / self.peak_flops}

    def update(self, samples: int, seconds: float) -> dict:
        """Record an interval (`samples` over all devices in `seconds`) and return its `rates`."""
        out = self.rates(samples, seconds)
        self.samples += samples
        self.seconds += seconds
        return out

    def summary(self) -> dict:
        """`rates` over every recorded interval, plus `samples` and `seconds` (the run summary);
        rates are None before the first update."""
        if self.seconds <= 0:
            rates = dict.fromkeys(("samples_per_s", "samples_per_s_per_device", "tflops", "mfu"))
        else:
            rates = self.rates(self.samples, self.seconds)
        return {**rates, "samples": self.samples, "seconds": self.seconds}


def meter_for(model_cfg, teacher_dim: int, world_size: int, device: str, threads: int | None = None,
              cache_path=None) -> ThroughputMeter:
    """The meter of a stage-2 run: `model_cfg` is an `LLM2CLIPConfig` (its `vision` and `adapter`;
    FP8 peak when `vision.fp8`), `teacher_dim` the teacher's hidden size (the adapter's input),
    `device` 'cpu' or 'cuda' (see `flops.peak_flops`)."""
    flops = train_flops_per_sample(model_cfg.vision, model_cfg.adapter, teacher_dim)
    peak = peak_flops(device, fp8=bool(model_cfg.vision.fp8), threads=threads, cache_path=cache_path)
    return ThroughputMeter(flops, peak, world_size)
