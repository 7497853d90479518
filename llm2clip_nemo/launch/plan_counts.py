"""Parameter, FLOP and memory counts of the capacity planner (`launch.plan`).

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

from .plan_shapes import TeacherShape, VisionShape


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
