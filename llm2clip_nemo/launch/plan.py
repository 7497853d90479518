"""Capacity planner: FLOPs, memory per GPU, throughput, wall time and embedding storage for a run.

    llm2clip-nemo plan --config-name pretrain_large plan.gpus=256 plan.samples=2e9
    llm2clip-nemo plan --config-name pretrain_large model.teacher_mode=online plan.teacher_preset=qwen3-8b
    plan(vision={"width": 1024, "layers": 24, ...}, teacher={...}, batch=32768, gpus=256)

The CLI reads the recipe's typed config (stage 2: TrainCLIPConfig; extract: ExtractConfig) with its
overrides merged, field by field: the teacher mode (offline: no teacher FLOPs or memory in the
step), every caption field the sidecars hold, the teacher's TP and max_length, and its shape from
`plan.teacher_preset`, a Megatron teacher dir (`hf/config.json`), a HF dir (`config.json`) or the
embedded SmolLM2.

Counts (2 FLOPs per multiply-add; norms, softmax and biases ignored):
  * ViT forward per image: patch conv 2*(s-1)*C*p^2*w, per layer 2*s*(4w^2 + 2*w*m) for the
    projections and MLP plus 4*s^2*w for QK^T and AV, and the output projection. Training is
    3x forward (backward = 2x); full recompute adds one more forward (hardware, not model FLOPs).
  * Teacher (Llama) forward per caption of t tokens: 2*t*(non-embedding params) + 4*L*t^2*h. The
    embedding lookup is not a matmul and an encoder has no LM head (`include_lm_head` for the
    "2 * N * tokens" convention that counts a causal LM's head).
  * Memory per GPU: fp32 params + fp32 grads + AdamW m,v (optionally sharded over data-parallel
    ranks); activations per Korthikanti et al. 2022 with 2-byte activations: per layer
    s*b*(18w + 4m) bytes (34*s*b*w at m=4w) plus 5*a*s^2*b without fused attention; with full
    recompute only the layer inputs 2*s*b*w per layer plus one layer's working set. The frozen
    teacher: its bf16 TP shard and one layer's inference working set on the TP group's batch.
  * Throughput: samples/s = gpus * peak * MFU / model FLOPs per sample.
  * Offline embeddings: samples * caption fields * dim * bytes (one vector per field per sample).
    Online, the stream draws one caption per sample per step (data.captions), so the teacher
    embeds one caption per sample.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.plan import H100_BF16_DENSE_TFLOPS

# Published shapes for `plan.teacher_preset`: hidden_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads, intermediate_size, vocab_size of each model's Hugging Face config.json
# (meta-llama/Meta-Llama-3-8B, meta-llama/Llama-3.1-8B, meta-llama/Llama-3.2-1B and -3B,
# meta-llama/Meta-Llama-3-70B, mistralai/Mistral-7B-v0.1, Qwen/Qwen2.5-7B, Qwen/Qwen3-8B (head_dim 128),
# HuggingFaceTB/SmolLM2-135M-Instruct). Qwen's QKV biases and QK norms are left out of the counts
# (< 0.01% of the parameters).
TEACHER_PRESETS: dict[str, dict[str, int]] = {
    "llama-3-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=128256),
    "llama-3.1-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=128256),
    "llama-3.2-1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192, vocab=128256),
    "llama-3.2-3b": dict(hidden=3072, layers=28, heads=24, kv_heads=8, ffn=8192, vocab=128256),
    "llama-3-70b": dict(hidden=8192, layers=80, heads=64, kv_heads=8, ffn=28672, vocab=128256),
    "mistral-7b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=32000),
    "qwen2.5-7b": dict(hidden=3584, layers=28, heads=28, kv_heads=4, ffn=18944, vocab=152064),
    "qwen3-8b": dict(hidden=4096, layers=36, heads=32, kv_heads=8, ffn=12288, vocab=151936, head_dim=128),
    "smollm2-135m": dict(hidden=576, layers=30, heads=9, kv_heads=3, ffn=1536, vocab=49152),
}
EMBEDDED_PRESET = "smollm2-135m"
"""The shape of teacher.path='embedded' (the packaged SmolLM2-135M-Instruct)."""


@dataclass(frozen=True)
class VisionShape:
    """The ViT dimensions the counts need."""

    width: int
    layers: int
    heads: int
    mlp_dim: int
    patch_size: int
    image_size: int
    channels: int = 3
    embed_dim: int = 0
    """Output projection size (0: no projection)."""
    family: str = "clip"
    """'clip' (class token, CLS pooling) or 'siglip' (no class token, attention-pooling head, no projection)."""

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + (0 if self.family == "siglip" else 1)


@dataclass(frozen=True)
class TeacherShape:
    """The Llama teacher dimensions the counts need."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    seq_len: int = 77
    """Caption tokens per forward (padded length)."""
    tensor_parallel: int = 1
    mode: str = "online"
    """'online' (teacher runs in the training step) or 'offline' (precomputed embedding sidecars)."""
    head_dim_override: int = 0
    """Attention head size when the config sets it apart from hidden / heads (Qwen3's head_dim); 0 = derived."""

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden // self.heads


_ALIASES = {
    "layers": ("layers", "num_layers", "num_hidden_layers"),
    "heads": ("heads", "num_heads", "num_attention_heads"),
    "kv_heads": ("kv_heads", "num_kv_heads", "num_key_value_heads", "num_query_groups"),
    "hidden": ("hidden", "hidden_size", "width"),
    "ffn": ("ffn", "ffn_hidden_size", "intermediate_size"),
    "vocab": ("vocab", "vocab_size"),
    "mlp_dim": ("mlp_dim", "intermediate_size"),
    "channels": ("channels", "num_channels"),
    "seq_len": ("seq_len", "max_length", "max_seq_len"),
    "tensor_parallel": ("tensor_parallel", "tp", "tensor_model_parallel_size"),
    "head_dim": ("head_dim", "kv_channels"),
}


def _as_dict(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    if dataclasses.is_dataclass(section):
        return dataclasses.asdict(section)
    return dict(section)


def _pick(d: Mapping[str, Any], name: str, where: str, default: Any = None) -> Any:
    for key in _ALIASES.get(name, (name,)):
        if d.get(key) is not None:
            return d[key]
    if default is not None:
        return default
    raise ValueError(f"{where}.{name} is missing: set it (or {where}.preset) in the config or as {where}.{name}=N.")


def vision_shape(section: Any) -> VisionShape:
    """A VisionShape from a dict-like/dataclass section (vision.{width,layers,heads,mlp_dim,patch_size,
    image_size}; ViTConfig's names work too; `preset: L/14` fills them from vision.config.PRESETS)."""
    d = _as_dict(section)
    if d.get("preset"):
        from ..vision.config import PRESETS  # lazy: imports torch via the vision package

        if d["preset"] not in PRESETS:
            raise ValueError(f"vision.preset={d['preset']!r} is unknown: choose one of {sorted(PRESETS)}.")
        d = {**dataclasses.asdict(PRESETS[d["preset"]]), **{k: v for k, v in d.items() if k != "preset"}}
    v = VisionShape(width=int(_pick(d, "width", "vision")), layers=int(_pick(d, "layers", "vision")),
                    heads=int(_pick(d, "heads", "vision")), mlp_dim=int(_pick(d, "mlp_dim", "vision")),
                    patch_size=int(_pick(d, "patch_size", "vision")), image_size=int(_pick(d, "image_size", "vision")),
                    channels=int(_pick(d, "channels", "vision", 3)), embed_dim=int(d.get("embed_dim") or 0),
                    family=str(d.get("family") or "clip"))
    if v.family == "siglip":  # no projection: the pooled output is the embedding
        v = dataclasses.replace(v, embed_dim=0)
    if v.image_size % v.patch_size and v.family != "siglip":  # SigLIP floors the patch grid
        raise ValueError(f"vision.image_size={v.image_size} is not a multiple of vision.patch_size={v.patch_size}.")
    return v


def preset_shape(name: str, where: str = "plan.teacher_preset") -> dict[str, int]:
    """The TEACHER_PRESETS entry `name`; ValueError naming `where` and the choices when unknown."""
    if name not in TEACHER_PRESETS:
        raise ValueError(f"{where}={name!r} is unknown: choose one of {', '.join(sorted(TEACHER_PRESETS))}.")
    return dict(TEACHER_PRESETS[name])


def _checkpoint_shape(path: str) -> dict[str, Any] | None:
    """The HF config.json of a teacher checkpoint: a Megatron teacher dir (`convert import-llm`
    keeps the source's config in hf/) or a HF model dir; the embedded SmolLM2's preset; None if
    neither is readable here."""
    if path == "embedded":
        return dict(TEACHER_PRESETS[EMBEDDED_PRESET])
    for f in (Path(path) / "hf" / "config.json", Path(path) / "config.json"):
        if f.is_file():
            return json.loads(f.read_text())
    return None


def teacher_shape(section: Any) -> TeacherShape | None:
    """A TeacherShape from teacher.{hidden,layers,heads,kv_heads,ffn,vocab,seq_len,tensor_parallel,mode},
    `preset` (TEACHER_PRESETS) or `path` (a Hugging Face model dir with config.json). None when absent."""
    d = _as_dict(section)
    if not d:
        return None
    base: dict[str, Any] = {}
    if d.get("preset"):
        base = preset_shape(d["preset"], "teacher.preset")
    elif d.get("path"):
        base = _checkpoint_shape(str(d["path"])) or {}
    d = {**base, **{k: v for k, v in d.items() if v is not None}}
    mode = str(d.get("mode", "online"))
    if mode not in ("online", "offline"):
        raise ValueError(f"teacher.mode={mode!r}: choose 'online' or 'offline'.")
    t = TeacherShape(hidden=int(_pick(d, "hidden", "teacher")), layers=int(_pick(d, "layers", "teacher")),
                     heads=int(_pick(d, "heads", "teacher")), kv_heads=int(_pick(d, "kv_heads", "teacher", d.get("heads"))),
                     ffn=int(_pick(d, "ffn", "teacher")), vocab=int(_pick(d, "vocab", "teacher")),
                     seq_len=int(_pick(d, "seq_len", "teacher", 77)),
                     tensor_parallel=int(_pick(d, "tensor_parallel", "teacher", 1)), mode=mode,
                     head_dim_override=int(d.get("head_dim") or d.get("kv_channels") or 0))
    for what, n in (("heads", t.heads), ("kv_heads", t.kv_heads)):
        if n % t.tensor_parallel:
            raise ValueError(f"teacher.tensor_parallel={t.tensor_parallel} does not divide teacher.{what}={n}.")
    return t


# ---------------------------------------------------------------- counts
def vit_param_count(width: int, layers: int, mlp_dim: int, patch_size: int, image_size: int,
                    channels: int = 3, embed_dim: int = 0, family: str = "clip") -> int:
    """Parameters of a CLIP ViT: bias-free patch conv, class token, learned positions, pre-LN,
    `layers` pre-LN blocks (QKV/out/MLP with biases, two LayerNorms), post-LN, bias-free projection
    to `embed_dim` (0: none). Matches HF CLIPVisionModelWithProjection.
    family='siglip' (HF SiglipVisionModel): patch conv with bias, no class token, no pre-LN, post-LN,
    attention-pooling head (probe, in/out projections, one LayerNorm, MLP), no projection."""
    w, m = width, mlp_dim
    per_layer = (3 * w * w + 3 * w) + (w * w + w) + (w * m + m) + (m * w + w) + 2 * 2 * w
    if family == "siglip":
        embed = channels * patch_size**2 * w + w + (image_size // patch_size) ** 2 * w
        return embed + layers * per_layer + 2 * w + (w + per_layer - 2 * w)
    tokens = (image_size // patch_size) ** 2 + 1
    embed = channels * patch_size**2 * w + w + tokens * w
    return embed + 2 * w + layers * per_layer + 2 * w + w * embed_dim


def vit_forward_flops(v: VisionShape) -> float:
    """Forward FLOPs per image."""
    s, w, m = v.tokens, v.width, v.mlp_dim
    patch = 2 * (v.image_size // v.patch_size) ** 2 * v.channels * v.patch_size**2 * w
    per_layer = 2 * s * (4 * w * w + 2 * w * m) + 4 * s * s * w
    if v.family == "siglip":  # attention-pooling head: k/v over s tokens, one query, out proj, MLP
        head = 2 * s * 2 * w * w + 2 * 2 * w * w + 2 * 2 * s * w + 2 * 2 * w * m
        return float(patch + v.layers * per_layer + head)
    return float(patch + v.layers * per_layer + 2 * w * v.embed_dim)


def llama_param_count(t: TeacherShape, include_embedding: bool = True, include_lm_head: bool = False) -> int:
    """Parameters of a Llama decoder (RMSNorm, SwiGLU, GQA, no biases)."""
    h, q, kv = t.hidden, t.heads * t.head_dim, t.kv_heads * t.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * t.ffn + 2 * h
    n = t.layers * per_layer + h
    return n + (t.vocab * h if include_embedding else 0) + (t.vocab * h if include_lm_head else 0)


def llama_forward_flops(t: TeacherShape, tokens: int | None = None, include_lm_head: bool = False) -> float:
    """Forward FLOPs per caption of `tokens` tokens (default teacher.seq_len)."""
    s = tokens or t.seq_len
    matmul = 2 * s * llama_param_count(t, include_embedding=False, include_lm_head=include_lm_head)
    return float(matmul + 4 * t.layers * s * s * t.heads * t.head_dim)


def vit_activation_bytes(v: VisionShape, batch: int, recompute: bool, fused_attention: bool = True) -> float:
    """Activation memory of the ViT's training step for `batch` images (2-byte activations)."""
    s, w, m, a = v.tokens, v.width, v.mlp_dim, v.heads
    layer = s * batch * (18 * w + 4 * m) + (0 if fused_attention else 5 * a * s * s * batch)
    if recompute:
        return float(v.layers * 2 * s * batch * w + layer)
    return float(v.layers * layer)


def offline_storage_bytes(samples: float, captions: int, dim: int, bytes_per_value: float = 2) -> float:
    """Embedding sidecars: one `dim`-vector per caption per sample."""
    return float(samples) * captions * dim * bytes_per_value


# ---------------------------------------------------------------- the plan
def plan(vision: Any, teacher: Any = None, *, batch: int, gpus: int, mfu: float = 0.4,
         peak_tflops: float = H100_BF16_DENSE_TFLOPS, samples: float = 1e9, captions_per_sample: int = 1,
         recompute: bool = False, fused_attention: bool = True, distributed_optimizer: bool = False,
         embedding_bytes: float = 2, sidecar_fields: int | None = None) -> dict[str, Any]:
    """Estimates for training `vision` against `teacher` with global `batch` over `gpus` GPUs.

    `vision`/`teacher` are VisionShape/TeacherShape, or dict-like sections (see vision_shape /
    teacher_shape). captions_per_sample: captions the online teacher embeds per sample per step;
    sidecar_fields: caption vectors per sample in the offline sidecars (default captions_per_sample).
    Returns a flat dict of numbers (FLOPs, bytes, seconds)."""
    v = vision if isinstance(vision, VisionShape) else vision_shape(vision)
    t = teacher if isinstance(teacher, TeacherShape) or teacher is None else teacher_shape(teacher)
    if gpus < 1 or batch < 1:
        raise ValueError(f"plan needs gpus >= 1 and batch >= 1 (got gpus={gpus}, batch={batch}).")
    if batch % gpus:
        raise ValueError(f"batch={batch} is not divisible by gpus={gpus}: the global batch splits evenly over "
                         f"data-parallel ranks; use a multiple of {gpus}.")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu} must be in (0, 1].")
    if t is not None and gpus % t.tensor_parallel:
        raise ValueError(f"teacher.tensor_parallel={t.tensor_parallel} does not divide gpus={gpus}.")
    micro = batch // gpus
    fields = captions_per_sample if sidecar_fields is None else sidecar_fields
    r: dict[str, Any] = {"gpus": gpus, "global_batch": batch, "micro_batch": micro, "mfu": mfu,
                         "peak_tflops": peak_tflops, "samples": float(samples),
                         "teacher_mode": t.mode if t is not None else "none",
                         "captions_per_sample": captions_per_sample, "sidecar_fields": fields}

    # FLOPs per sample
    r["vision_params"] = vit_param_count(v.width, v.layers, v.mlp_dim, v.patch_size, v.image_size,
                                         v.channels, v.embed_dim, v.family)
    r["vision_forward_flops"] = vit_forward_flops(v)
    r["vision_train_flops"] = 3 * r["vision_forward_flops"]
    teacher_fwd = 0.0
    if t is not None:
        r["teacher_params"] = llama_param_count(t)
        r["teacher_forward_flops_per_caption"] = llama_forward_flops(t)
        teacher_fwd = r["teacher_forward_flops_per_caption"] * captions_per_sample if t.mode == "online" else 0.0
    r["teacher_flops_per_sample"] = teacher_fwd
    r["model_flops_per_sample"] = r["vision_train_flops"] + teacher_fwd
    r["hardware_flops_per_sample"] = r["model_flops_per_sample"] + (r["vision_forward_flops"] if recompute else 0.0)

    # memory per GPU
    p = r["vision_params"]
    r["mem_params"] = 4.0 * p
    r["mem_grads"] = 4.0 * p
    r["mem_optimizer"] = 8.0 * p / (gpus if distributed_optimizer else 1)
    r["mem_activations"] = vit_activation_bytes(v, micro, recompute, fused_attention)
    r["mem_activations_no_recompute"] = vit_activation_bytes(v, micro, False, fused_attention)
    r["mem_activations_recompute"] = vit_activation_bytes(v, micro, True, fused_attention)
    # contrastive logits: local rows x global columns, both directions, fp32
    r["mem_logits"] = 2 * 4.0 * micro * batch
    r["mem_teacher"] = 0.0
    if t is not None and t.mode == "online":
        tp = t.tensor_parallel
        weights = 2.0 * llama_param_count(t) / tp
        tokens = t.seq_len * micro * captions_per_sample * tp  # the TP group runs its gathered captions
        kv = t.kv_heads * t.head_dim
        working = 2.0 * tokens * (2 * t.hidden + (t.hidden + 2 * kv) / tp + 2 * t.ffn / tp)
        r["mem_teacher_weights"], r["mem_teacher_working"] = weights, working
        r["mem_teacher"] = weights + working
    r["mem_total"] = sum(r[k] for k in ("mem_params", "mem_grads", "mem_optimizer", "mem_activations",
                                        "mem_logits", "mem_teacher"))

    # throughput and time
    r["samples_per_s"] = gpus * peak_tflops * 1e12 * mfu / r["model_flops_per_sample"]
    r["step_time_s"] = batch / r["samples_per_s"]
    r["wall_time_s"] = float(samples) / r["samples_per_s"]
    r["gpu_hours"] = r["wall_time_s"] * gpus / 3600

    # offline embeddings (what extract writes; the run reads them in offline mode)
    if t is not None:
        r["offline_storage_bytes"] = offline_storage_bytes(samples, fields, t.hidden, embedding_bytes)
        extract_flops = float(samples) * fields * r["teacher_forward_flops_per_caption"]
        r["extract_wall_time_s"] = extract_flops / (gpus * peak_tflops * 1e12 * mfu)
    return r


def plan_extract(teacher: Any, *, gpus: int, samples: float, captions_per_sample: int = 1, mfu: float = 0.4,
                 peak_tflops: float = H100_BF16_DENSE_TFLOPS, embedding_bytes: float = 2) -> dict[str, Any]:
    """Offline extraction only (the `extract` verb): teacher cost, time on `gpus` GPUs, sidecar storage."""
    t = teacher if isinstance(teacher, TeacherShape) else teacher_shape(teacher)
    if t is None:
        raise ValueError("plan_extract needs a teacher section (teacher.preset, teacher.path or its shape).")
    if gpus < 1 or gpus % t.tensor_parallel:
        raise ValueError(f"teacher.tensor_parallel={t.tensor_parallel} does not divide gpus={gpus}.")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu} must be in (0, 1].")
    per_caption = llama_forward_flops(t)
    captions_per_s = gpus * peak_tflops * 1e12 * mfu / per_caption
    return {"gpus": gpus, "samples": float(samples), "captions_per_sample": captions_per_sample, "mfu": mfu,
            "peak_tflops": peak_tflops, "teacher_params": llama_param_count(t),
            "teacher_forward_flops_per_caption": per_caption,
            "mem_teacher_weights": 2.0 * llama_param_count(t) / t.tensor_parallel,
            "captions_per_s": captions_per_s,
            "extract_wall_time_s": float(samples) * captions_per_sample / captions_per_s,
            "offline_storage_bytes": offline_storage_bytes(samples, captions_per_sample, t.hidden, embedding_bytes)}


# ---------------------------------------------------------------- presentation
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
    if "teacher_params" in r:
        offline = r["teacher_mode"] == "offline"
        rows += [("teacher mode", "offline (embedding sidecars; the teacher is not in the step)" if offline
                  else f"online ({r['captions_per_sample']} caption(s) per sample through the TP teacher)"),
                 ("teacher params", _si(r["teacher_params"], "")),
                 ("teacher forward / caption", _si(r["teacher_forward_flops_per_caption"], "FLOP")),
                 ("teacher FLOPs / sample in the step", _si(r["teacher_flops_per_sample"], "FLOP"))]
    rows += [
        ("model FLOPs / sample", _si(r["model_flops_per_sample"], "FLOP")),
        ("memory/GPU: params fp32", _bytes(r["mem_params"])),
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


def _recipe_schema(config_name: str | None, config_dir: Path | None, overrides: list[str]) -> type:
    """The typed config of the recipe a YAML belongs to: ExtractConfig when it has a top-level teacher or
    data section, else the stage-2 TrainCLIPConfig."""
    from omegaconf import OmegaConf

    from ..config.loader import CONFIG_DIR, ConfigError

    keys = {o.split("=", 1)[0].split(".", 1)[0] for o in overrides}
    if config_name:
        d = Path(config_dir) if config_dir else CONFIG_DIR
        f = d / (config_name if config_name.endswith(".yaml") else f"{config_name}.yaml")
        if f.is_file():
            keys |= set(OmegaConf.load(f).keys())
    if "model" not in keys and keys & {"teacher", "data", "projection"}:
        from ..recipes.extract import ExtractConfig

        return ExtractConfig
    if keys & {"model", "trainer"} or not keys - {"plan"}:
        from ..recipes.train_clip import TrainCLIPConfig

        return TrainCLIPConfig
    raise ConfigError(f"cannot tell the recipe of {config_name!r}: plan reads stage-2 configs (model.vision, "
                      "model.teacher: pretrain_*, finetune_*) and extract configs (teacher, data: extract_*).")


def _preset_aliases(overrides: list[str]) -> list[str]:
    """`teacher.preset=X` / `model.teacher.preset=X` (the names users reach for) -> plan.teacher_preset=X."""
    return [f"plan.teacher_preset={o.split('=', 1)[1]}" if o.split("=", 1)[0] in ("teacher.preset", "model.teacher.preset")
            else o for o in overrides]


def _caption_tokens(teacher) -> int:
    """Tokens per caption the teacher embeds: the config's max_length when set, else the contract
    recorded with the teacher at teacher.path (when it is on this machine), else the contract
    default `convert import-llm` writes (`formats.contract.TeacherContract.max_length`)."""
    from ..formats.contract import TeacherContract, read_contract

    if teacher.max_length:
        return int(teacher.max_length)
    recorded = read_contract(teacher.path) if teacher.path and Path(teacher.path).exists() else None
    return (recorded or TeacherContract()).max_length


def shape_from_teacher_config(teacher, preset: str, mode: str, where: str) -> TeacherShape:
    """TeacherShape of a typed TeacherConfig: the shape from `preset`, else from teacher.path (see
    `_checkpoint_shape`); tensor parallelism and the caption length (max_length) from the config."""
    if preset:
        base: dict[str, Any] | None = preset_shape(preset)
    else:
        base = _checkpoint_shape(teacher.path)
    if base is None:
        raise ValueError(f"{where}.path={teacher.path!r} is neither a Megatron teacher dir (hf/config.json) nor a "
                         f"HF model dir (config.json) on this machine: name its shape with plan.teacher_preset=NAME "
                         f"({', '.join(sorted(TEACHER_PRESETS))}).")
    return teacher_shape({**base, "preset": None, "path": None, "seq_len": _caption_tokens(teacher),
                          "tensor_parallel": teacher.tensor_parallel, "mode": mode})


def plan_from_config(cfg) -> dict[str, Any]:
    """The plan of a typed recipe config (TrainCLIPConfig or ExtractConfig, overrides merged)."""
    knobs = cfg.plan
    if hasattr(cfg, "model"):  # stage 2
        m, trainer = cfg.model, cfg.trainer
        if m.mode == "finetune":  # fields left to the checkpoint (0 / 'checkpoint') take its values
            from ..formats.vision_checkpoint import adopt_checkpoint_architecture

            m.vision = adopt_checkpoint_architecture(m.vision, m.init_from)
        t = shape_from_teacher_config(m.teacher, knobs.teacher_preset, m.teacher_mode, "model.teacher")
        gpus = knobs.gpus or int(trainer.num_nodes) * int(trainer.devices)
        batch = knobs.batch or m.global_batch_size or m.train_ds.batch_size * gpus
        fields = [f for f, w in m.train_ds.caption_fields.items() if w > 0]
        return plan(m.vision, t, batch=batch, gpus=gpus, mfu=knobs.mfu, peak_tflops=knobs.peak_tflops,
                    samples=knobs.samples or 1e9, captions_per_sample=1, sidecar_fields=len(fields),
                    recompute=bool(m.vision.recompute), fused_attention=knobs.fused_attention,
                    distributed_optimizer=knobs.distributed_optimizer, embedding_bytes=knobs.embedding_bytes or 2)
    t = shape_from_teacher_config(cfg.teacher, knobs.teacher_preset, "offline", "teacher")
    emb = knobs.embedding_bytes or (1 if cfg.data.storage_dtype == "int8" else 2)
    return plan_extract(t, gpus=knobs.gpus or cfg.projection.gpus, samples=knobs.samples or cfg.projection.samples,
                        captions_per_sample=len(cfg.data.fields), mfu=knobs.mfu, peak_tflops=knobs.peak_tflops,
                        embedding_bytes=emb)


def main(argv: list[str] | None = None) -> int:
    from ..config.loader import ConfigError, load_config, parse_recipe_args

    p = argparse.ArgumentParser(
        prog="llm2clip-nemo plan", description=__doc__.splitlines()[0],
        usage="llm2clip-nemo plan [--config-name NAME] [--config-path DIR] [key=value ...] [--json]",
        epilog="Reads the recipe's typed config (pretrain_*/finetune_*: TrainCLIPConfig; extract_*: ExtractConfig) "
               "with its overrides; the teacher's shape from plan.teacher_preset (or teacher.preset=NAME), a Megatron "
               "teacher dir or a HF dir at teacher.path. Planner knobs: plan.gpus, plan.batch, plan.samples, plan.mfu "
               "(0.4), plan.peak_tflops (989, H100 bf16 dense), plan.fused_attention, plan.distributed_optimizer, "
               f"plan.embedding_bytes. Presets: {', '.join(sorted(TEACHER_PRESETS))}.")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    try:
        name, path, overrides, rest = parse_recipe_args(list(argv or []))
        args = p.parse_args(rest)
        overrides = _preset_aliases(overrides)
        schema = _recipe_schema(name, path, overrides)
        # names and types are checked; validate() is not run: the recipe's paths exist on the cluster only
        cfg = load_config(schema, name, overrides, path, validate=False)
        cfg.plan.validate()
        r = plan_from_config(cfg)
    except (ConfigError, ValueError) as e:
        print(f"llm2clip-nemo plan: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r, indent=2) if args.json else format_table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
