"""Model FLOPs of a training step and the peak FLOP/s they are measured against (for MFU).

Counting (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1; Chowdhery et al.
2022, "PaLM", appendix B): a multiply-add is 2 FLOPs; the forward pass counts every matmul, the
attention score and value products included (2 * 2 * s^2 * width per layer); norms, activations,
softmax and the optimizer are left out (< 1% for ViT-B and up). The backward pass costs twice the
forward (a gradient for the input and one for the weight of every matmul), so a training step is
3 x forward. These are *model* FLOPs: activation recomputation re-runs a forward but does not count
(PaLM's MFU convention), so MFU compares runs with and without it fairly.
Also left out: the contrastive logits (2 * global_batch * embed_dim per sample forward: 0.2% of
ViT-B/16 at a 32k batch) and the frozen teacher (offline: not run; online: no backward).

Peaks: `GPU_PEAKS` (datasheet dense tensor-core numbers) for CUDA devices; on CPU the peak is an
fp32 GEMM measured once at the run's thread count and cached (`cpu_peak_flops`).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

GPU_PEAKS: dict[str, dict[str, float]] = {
    # name pattern (a substring of torch.cuda.get_device_name(); first match wins) -> dense FLOP/s.
    # NVIDIA datasheets quote "with sparsity" (2:4), twice these; the values match torchtitan's table.
    # H200 datasheet (SXM): BF16 1,979 / FP8 3,958 TFLOPS with sparsity
    "H200": {"bf16": 989e12, "fp8": 1979e12},
    # H100 datasheet: NVL BF16 1,671 / FP8 3,341; PCIe 1,513 / 3,026; SXM5 (device name
    # "NVIDIA H100 80GB HBM3") 1,979 / 3,958 TFLOPS with sparsity
    "H100 NVL": {"bf16": 835e12, "fp8": 1670e12},
    "H100 PCIe": {"bf16": 756e12, "fp8": 1513e12},
    "H100": {"bf16": 989e12, "fp8": 1979e12},
    # A100 datasheet (SXM and PCIe): BF16 312 TFLOPS dense; no FP8 tensor cores
    "A100": {"bf16": 312e12},
}
"""Dense peak FLOP/s per precision ('bf16', 'fp8') of the GPUs we run on; datasheets quote 2x with
2:4 structured sparsity, halved here. A precision a GPU lacks is absent."""

CPU_PEAK_CACHE = Path.home() / ".cache" / "llm2clip_nemo" / "cpu_peak.json"
"""Default cache of measured CPU peaks: a JSON object {key: FLOP/s}, key from `cpu_peak_key`."""


def vision_forward_flops(vision) -> float:
    """Forward FLOPs per image of the vision tower: `vision.forward_flops()` (a `ViTConfig`), the one
    count of it: patch conv, per layer QKV 3w^2 + out w^2 + MLP 2wm per token and attention
    2 * s^2 * w, then the projection of the pooled token."""
    return float(vision.forward_flops())


def adapter_forward_flops(adapter, input_dim: int, joint_dim: int) -> float:
    """Forward FLOPs per caption of the LLM2CLIP adapter (an `AdapterConfig`; its sizes are derived:
    `input_dim` = the teacher's hidden size d, `joint_dim` = the vision tower's embed_dim): every
    block's d -> expansion*d -> d MLP, then the d -> joint projection; 2 FLOPs per multiply-add."""
    d, h = input_dim, adapter.expansion * input_dim
    return float(2 * (adapter.num_blocks * 2 * d * h + d * joint_dim))


def train_flops_per_sample(vision, adapter, input_dim: int) -> float:
    """Model FLOPs of one training sample (one image, one caption embedding): 3 x (vision forward +
    adapter forward). `vision`: a `ViTConfig`; `adapter`: an `AdapterConfig`; `input_dim`: the
    teacher's hidden size (the adapter's output is `vision.embed_dim`)."""
    return 3.0 * (vision_forward_flops(vision) + adapter_forward_flops(adapter, input_dim, vision.embed_dim))


def gpu_peak_flops(device_name: str, precision: str = "bf16") -> float | None:
    """Dense peak FLOP/s of `device_name` (as `torch.cuda.get_device_name()` spells it) in `precision`
    ('bf16' or 'fp8'); None for a GPU or precision not in `GPU_PEAKS`."""
    if precision not in ("bf16", "fp8"):
        raise ValueError(f"precision={precision!r}: choose bf16 or fp8")
    for pattern, peaks in GPU_PEAKS.items():
        if pattern in device_name:
            return peaks.get(precision)
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform string where that file is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_peak_key(threads: int) -> str:
    """Cache key of a CPU peak: CPU model, thread count and torch version (a new torch may link a
    faster BLAS)."""
    import torch

    return f"{cpu_model()} | threads={threads} | torch={torch.__version__}"


def measure_cpu_gemm_flops(threads: int, n: int = 1024, seconds: float = 1.0) -> float:
    """Best fp32 FLOP/s of an n x n x n matmul (2 n^3 FLOPs) over `seconds` of repeats at `threads`
    intra-op threads. The best, not the mean, because a shared machine only ever slows a repeat."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm-up: BLAS thread pool and packing buffers
        best, end = float("inf"), time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
            if t0 > end:
                break
        return 2.0 * n**3 / best
    finally:
        torch.set_num_threads(before)


def cpu_peak_flops(threads: int | None = None, cache_path: str | os.PathLike | None = None) -> float:
    """Peak fp32 FLOP/s of this CPU at `threads` (default: torch's current count): read from the
    cache at `cache_path` (default `CPU_PEAK_CACHE`) or measured once (`measure_cpu_gemm_flops`,
    ~1 s) and written there. An unreadable cache is measured over, not raised."""
    import torch

    threads = threads or torch.get_num_threads()
    path = Path(cache_path) if cache_path is not None else CPU_PEAK_CACHE
    key = cpu_peak_key(threads)
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache.get(key), (int, float)) and cache[key] > 0:
        return float(cache[key])
    cache[key] = measure_cpu_gemm_flops(threads)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, path)  # atomic: two ranks measuring at once leave a whole file
    except OSError:
        pass  # a read-only home still gets its number, measured again next run
    return float(cache[key])


def peak_flops(device: str, fp8: bool = False, threads: int | None = None,
               cache_path: str | os.PathLike | None = None) -> float | None:
    """Peak FLOP/s per device for MFU: on 'cuda' the `GPU_PEAKS` entry of the current GPU (FP8 when
    `fp8`, else BF16; None when the GPU is not in the table); on 'cpu' the measured fp32 GEMM peak
    (`cpu_peak_flops`)."""
    if str(device).startswith("cuda"):
        import torch

        return gpu_peak_flops(torch.cuda.get_device_name(), "fp8" if fp8 else "bf16")
    return cpu_peak_flops(threads, cache_path)
