"""Parameter, FLOP and memory counts of the capacity planner (`launch.plan`).

Counts (2 FLOPs per multiply-add; norms, softmax and biases ignored):
  * Vision tower and adapter: not here. The run's own counts are used (`ViTConfig.num_params`,
    `runtime.flops.vision_forward_flops` / `train_flops_per_sample`, the figure a run's MFU divides
    by): training is 3x forward (backward = 2x); full recompute adds one more vision forward
    (hardware, not model FLOPs).
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

from ..vision.config import ViTConfig
from .plan_shapes import TeacherShape


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


def vit_activation_bytes(v: ViTConfig, batch: int, recompute: bool, fused_attention: bool = True) -> float:
    """Activation memory in bytes of the ViT's training step for `batch` images (2-byte activations)."""
    s, w, m, a = v.seq_len, v.width, v.mlp_dim, v.num_heads
    layer = s * batch * (18 * w + 4 * m) + (0 if fused_attention else 5 * a * s * s * batch)
    if recompute:
        return float(v.num_layers * 2 * s * batch * w + layer)
    return float(v.num_layers * layer)


def offline_storage_bytes(samples: float, captions: int, dim: int, bytes_per_value: float = 2) -> float:
    """Embedding sidecars: one `dim`-vector per caption per sample."""
    return float(samples) * captions * dim * bytes_per_value
