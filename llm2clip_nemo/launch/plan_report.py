"""The capacity plan (`launch.plan`) as a text table: SI units, binary bytes, durations."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _bytes(x: float) -> str:
    for scale, prefix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if x >= scale:
            return f"{x / scale:.2f} {prefix}"
    return f"{x:.0f} B"


def _duration(s: float) -> str:
    if s >= 86400:
        return f"{s / 86400:.2f} days"
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.1f} s"


def format_table(r: Mapping[str, Any]) -> str:
    if "vision_params" not in r:  # an extraction plan
        rows = [("GPUs", str(r["gpus"])),
                ("teacher params", _si(r["teacher_params"], "")),
                ("teacher forward / caption", _si(r["teacher_forward_flops_per_caption"], "FLOP")),
                ("memory/GPU: teacher bf16 TP shard", _bytes(r["mem_teacher_weights"])),
                (f"throughput at MFU {r['mfu']:.0%} of {r['peak_tflops']:.0f} TFLOP/s", f"{r['captions_per_s']:,.0f} captions/s"),
                (f"extraction of {r['samples']:.3g} samples x {r['captions_per_sample']} captions",
                 f"{_duration(r['extract_wall_time_s'])} ({r['extract_wall_time_s'] * r['gpus'] / 3600:,.0f} GPU-h)"),
                ("offline embeddings storage", f"{_si(r['offline_storage_bytes'], 'B')} ({_bytes(r['offline_storage_bytes'])})")]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    rows = [
        ("GPUs / global batch / per GPU", f"{r['gpus']} / {r['global_batch']} / {r['micro_batch']}"),
        ("vision params", _si(r["vision_params"], "")),
        ("vision forward / image", _si(r["vision_forward_flops"], "FLOP")),
        ("vision train (3x fwd) / image", _si(r["vision_train_flops"], "FLOP")),
    ]
    if r.get("adapter_params"):
        rows += [("adapter params", _si(r["adapter_params"], "")),
                 ("adapter forward / caption", _si(r["adapter_forward_flops"], "FLOP"))]
    rows += [("train FLOPs / sample (a run's MFU count)", _si(r["train_flops_per_sample"], "FLOP"))]
    if "teacher_params" in r:
        offline = r["teacher_mode"] == "offline"
        rows += [("teacher mode", "offline (embedding sidecars; the teacher is not in the step)" if offline
                  else f"online ({r['captions_per_sample']} caption(s) per sample through the TP teacher)"),
                 ("teacher params", _si(r["teacher_params"], "")),
                 ("teacher forward / caption", _si(r["teacher_forward_flops_per_caption"], "FLOP")),
                 ("teacher FLOPs / sample in the step", _si(r["teacher_flops_per_sample"], "FLOP"))]
    rows += [
        ("model FLOPs / sample", _si(r["model_flops_per_sample"], "FLOP")),
        ("memory/GPU: params fp32 (tower + adapter)", _bytes(r["mem_params"])),
        ("memory/GPU: grads fp32", _bytes(r["mem_grads"])),
        ("memory/GPU: AdamW m,v", _bytes(r["mem_optimizer"])),
        ("memory/GPU: activations (no recompute)", _bytes(r["mem_activations_no_recompute"])),
        ("memory/GPU: activations (full recompute)", _bytes(r["mem_activations_recompute"])),
        ("memory/GPU: contrastive logits", _bytes(r["mem_logits"])),
        ("memory/GPU: frozen teacher (bf16 TP shard + working)", _bytes(r["mem_teacher"])),
        ("memory/GPU: total (as configured)", _bytes(r["mem_total"])),
        (f"throughput at MFU {r['mfu']:.0%} of {r['peak_tflops']:.0f} TFLOP/s", f"{r['samples_per_s']:,.0f} samples/s"),
        ("step time", _duration(r["step_time_s"])),
        (f"wall time for {r['samples']:.3g} samples", f"{_duration(r['wall_time_s'])} ({r['gpu_hours']:,.0f} GPU-h)"),
    ]
    if "offline_storage_bytes" in r:
        rows += [(f"offline embeddings storage ({r['sidecar_fields']} caption field(s))",
                  f"{_si(r['offline_storage_bytes'], 'B')} ({_bytes(r['offline_storage_bytes'])})"),
                 ("offline extraction time (same GPUs)", _duration(r["extract_wall_time_s"]))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
