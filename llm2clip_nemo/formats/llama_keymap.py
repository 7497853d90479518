"""Declarative key maps between Hugging Face Llama-family models and our Megatron teacher, with TP
split/merge. HF names are the causal-LM ones (`model.` prefix); `convert.llm` maps other layouts to them.

One table per direction is derived from `LAYER_MAP`/`GLOBAL_MAP`: each row names the HF key(s),
the Megatron key and how the tensor is laid out across tensor-parallel ranks:

  replicate   the same tensor on every rank (norms)
  vocab       rows split by vocabulary range (padded to a multiple of TP with zero rows)
  row_split   rows split (column-parallel Linear output dim)
  col_split   columns split (row-parallel Linear input dim: o_proj, down_proj)
  qkv         q,k,v fused per query group: [g0: q-heads of g0, k0, v0 | g1: ...], split by groups
  gate_up     gate and up fused per rank: rank r holds cat(gate_r, up_r)
"""
from __future__ import annotations

import torch

from .llama_spec import LlamaSpec, padded_vocab_size

HF_LAYER = "model.layers.{i}."
MG_LAYER = "decoder.layers.{i}."

# (hf keys relative to the layer, megatron key relative to the layer, layout)
LAYER_MAP = [
    (("input_layernorm.weight",), "input_layernorm.weight", "replicate"),
    (("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
     "self_attention.linear_qkv.weight", "qkv"),
    (("self_attn.o_proj.weight",), "self_attention.linear_proj.weight", "col_split"),
    (("post_attention_layernorm.weight",), "pre_mlp_layernorm.weight", "replicate"),
    (("mlp.gate_proj.weight", "mlp.up_proj.weight"), "mlp.linear_fc1.weight", "gate_up"),
    (("mlp.down_proj.weight",), "mlp.linear_fc2.weight", "col_split"),
]
GLOBAL_MAP = [
    (("model.embed_tokens.weight",), "embedding.word_embeddings.weight", "vocab"),
    (("model.norm.weight",), "decoder.final_layernorm.weight", "replicate"),
    # Not used by the encoder, kept so an untied model survives the round trip.
    (("lm_head.weight",), "output_layer.weight", "vocab"),
]

# Transformer Engine's spec fuses the pre-norms into the following linear layer.
TE_RENAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}


# Per family: Qwen2's q/k/v biases fuse like the weight; Qwen3's per-head norms are replicated
# (megatron's q_layernorm/k_layernorm normalise over head_dim, as HF's q_norm/k_norm do).
QKV_BIAS_MAP = [
    (("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
     "self_attention.linear_qkv.bias", "qkv"),
]
QK_NORM_MAP = [
    (("self_attn.q_norm.weight",), "self_attention.q_layernorm.weight", "replicate"),
    (("self_attn.k_norm.weight",), "self_attention.k_layernorm.weight", "replicate"),
]
LM_HEAD = "lm_head.weight"


def key_table(spec: LlamaSpec, lm_head: bool = True) -> list[tuple[tuple[str, ...], str, str]]:
    """The full (hf keys, megatron key, layout) table for this model.

    `lm_head=False` for checkpoints without one (a bare encoder `LlamaModel`); tied models never list it.
    """
    rows = []
    for hf, mg, layout in GLOBAL_MAP:
        if hf == (LM_HEAD,) and (spec.tie_word_embeddings or not lm_head):
            continue
        rows.append((hf, mg, layout))
    layer_map = LAYER_MAP + (QKV_BIAS_MAP if spec.qkv_bias else []) + (QK_NORM_MAP if spec.qk_norm else [])
    for i in range(spec.num_layers):
        for hf, mg, layout in layer_map:
            rows.append((tuple(HF_LAYER.format(i=i) + k for k in hf), MG_LAYER.format(i=i) + mg, layout))
    return rows


def to_te_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for local, te in TE_RENAMES.items():
            if k.endswith("." + local):
                k = k[: -len(local)] + te
                break
        out[k] = v
    return out


def from_te_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inverse = {te: local for local, te in TE_RENAMES.items()}
    out = {}
    for k, v in sd.items():
        if k.endswith("._extra_state"):
            continue
        for te, local in inverse.items():
            if k.endswith("." + te):
                k = k[: -len(te)] + local
                break
        out[k] = v
    return out


# ---- split: full HF tensors -> TP shards -------------------------------------------------------

def _split_qkv(q, k, v, spec: LlamaSpec, tp: int) -> list[torch.Tensor]:
    """Weights [rows, hidden] or biases [rows]: the same per-group interleave along dim 0."""
    g, hd, rest = spec.num_kv_heads, spec.head_dim, tuple(q.shape[1:])
    qpg = spec.num_heads // g  # query heads per group
    fused = torch.cat([q.view(g, qpg * hd, *rest), k.view(g, hd, *rest), v.view(g, hd, *rest)], dim=1)
    return [c.reshape(-1, *rest).contiguous() for c in fused.chunk(tp, dim=0)]


def _merge_qkv(shards: list[torch.Tensor], spec: LlamaSpec):
    g, hd = spec.num_kv_heads, spec.head_dim
    qpg = spec.num_heads // g
    rest = tuple(shards[0].shape[1:])
    fused = torch.cat(shards, dim=0).view(g, (qpg + 2) * hd, *rest)
    q, k, v = fused.split([qpg * hd, hd, hd], dim=1)
    return tuple(t.reshape(-1, *rest).contiguous() for t in (q, k, v))


def _pad_vocab(t: torch.Tensor, spec: LlamaSpec, tp: int) -> torch.Tensor:
    rows = padded_vocab_size(spec.vocab_size, tp)
    if rows == t.shape[0]:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])], dim=0)


def split_tensor(hf: tuple[torch.Tensor, ...], layout: str, spec: LlamaSpec, tp: int) -> list[torch.Tensor]:
    if layout == "replicate":
        return [hf[0].clone() for _ in range(tp)]
    if layout == "vocab":
        return [c.contiguous() for c in _pad_vocab(hf[0], spec, tp).chunk(tp, dim=0)]
    if layout == "row_split":
        return [c.contiguous() for c in hf[0].chunk(tp, dim=0)]
    if layout == "col_split":
        return [c.contiguous() for c in hf[0].chunk(tp, dim=1)]
    if layout == "qkv":
        return _split_qkv(*hf, spec, tp)
    if layout == "gate_up":
        gate, up = hf
        return [torch.cat([g_, u_], dim=0) for g_, u_ in zip(gate.chunk(tp, dim=0), up.chunk(tp, dim=0))]
    raise KeyError(layout)


def merge_tensor(shards: list[torch.Tensor], layout: str, spec: LlamaSpec) -> tuple[torch.Tensor, ...]:
    if layout == "replicate":
        return (shards[0],)
    if layout == "vocab":
        return (torch.cat(shards, dim=0)[: spec.vocab_size].contiguous(),)
    if layout == "row_split":
        return (torch.cat(shards, dim=0),)
    if layout == "col_split":
        return (torch.cat(shards, dim=1),)
    if layout == "qkv":
        return _merge_qkv(shards, spec)
    if layout == "gate_up":
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves], dim=0), torch.cat([h[1] for h in halves], dim=0)
    raise KeyError(layout)


def hf_to_megatron(hf_sd: dict[str, torch.Tensor], spec: LlamaSpec, tp: int) -> list[dict[str, torch.Tensor]]:
    """Full HF state dict -> one Megatron (local-spec names) state dict per TP rank."""
    spec.check_tp(tp, "--tp")
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    for hf_keys, mg_key, layout in key_table(spec, lm_head=LM_HEAD in hf_sd):
        missing = [k for k in hf_keys if k not in hf_sd]
        if missing:
            raise KeyError(f"checkpoint lacks {missing[0]} (needed for {mg_key}); is it a complete {spec.family} model?")
        for r, t in enumerate(split_tensor(tuple(hf_sd[k] for k in hf_keys), layout, spec, tp)):
            shards[r][mg_key] = t
    return shards


def megatron_to_hf(shards: list[dict[str, torch.Tensor]], spec: LlamaSpec) -> dict[str, torch.Tensor]:
    """One Megatron state dict per TP rank (local or TE names) -> the full HF state dict."""
    shards = [from_te_names(s) for s in shards]
    out: dict[str, torch.Tensor] = {}
    for hf_keys, mg_key, layout in key_table(spec, lm_head="output_layer.weight" in shards[0]):
        if mg_key not in shards[0]:
            raise KeyError(f"Megatron checkpoint lacks {mg_key}; was it written by `convert import-llm`?")
        for k, t in zip(hf_keys, merge_tensor([s[mg_key] for s in shards], layout, spec)):
            out[k] = t
    return out
