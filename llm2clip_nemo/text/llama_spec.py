"""The Llama-family architecture, read from a Hugging Face config and checked once.

Both teacher backends and the converters take a `LlamaSpec`, so "which model is this" has one
answer and one set of error messages.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class LlamaSpec:
    """Shape and numerics of a Llama-family decoder (RMSNorm, SwiGLU, RoPE, GQA)."""

    vocab_size: int
    """Rows of the token embedding."""
    hidden_size: int
    """Model width."""
    num_layers: int
    """Decoder layers."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (query groups); == num_heads means plain multi-head attention."""
    ffn_hidden_size: int
    """SwiGLU inner width (gate and up each have this many rows)."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rms_norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_word_embeddings: bool = False
    """Whether lm_head shares the token embedding."""
    max_position_embeddings: int = 2048
    """Longest sequence the model was trained for."""
    head_dim: int = 0
    """Per-head width; 0 means hidden_size // num_heads."""

    def __post_init__(self):
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedModelError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}."
            )

    def check_tp(self, tp: int, field: str = "tensor_parallel") -> None:
        """TP must divide the query heads and the KV groups (each rank holds whole groups)."""
        if tp < 1:
            raise ValueError(f"{field}={tp} must be >= 1.")
        for what, n in (("num_attention_heads", self.num_heads), ("num_key_value_heads (query groups)", self.num_kv_heads)):
            if n % tp:
                divisors = [d for d in range(1, self.num_kv_heads + 1) if self.num_kv_heads % d == 0 and self.num_heads % d == 0]
                raise ValueError(
                    f"{field}={tp} does not divide {what}={n}: each TP rank must hold whole heads and KV "
                    f"groups. Use one of {divisors}."
                )

    @classmethod
    def from_hf_config(cls, cfg) -> LlamaSpec:
        """From a transformers PretrainedConfig (or its dict)."""
        d = cfg if isinstance(cfg, dict) else cfg.to_dict()
        archs = d.get("architectures") or []
        model_type = d.get("model_type")
        if model_type not in ("llama", "mistral") and not set(archs) & set(SUPPORTED_ARCHITECTURES):
            raise UnsupportedModelError(
                f"architecture {archs or model_type!r} is not supported; the teacher supports the Llama family "
                f"({', '.join(SUPPORTED_ARCHITECTURES)}): RMSNorm, SwiGLU, RoPE, grouped-query attention."
            )
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise UnsupportedModelError("attention_bias/mlp_bias=True is not supported (Llama has no linear biases).")
        if d.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act={d.get('hidden_act')!r} is not supported; Llama uses silu (SwiGLU).")
        rope = d.get("rope_scaling") or d.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default")) if rope else "default"
        if rope_type not in ("default", None):
            raise UnsupportedModelError(
                f"rope_scaling type {rope_type!r} is not supported yet; only plain RoPE (rope_scaling null)."
            )
        theta = d.get("rope_theta")
        if theta is None:
            theta = (d.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        if d.get("sliding_window"):
            raise UnsupportedModelError("sliding-window attention is not supported by the teacher.")
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            ffn_hidden_size=d["intermediate_size"],
            rope_theta=float(theta),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            head_dim=int(d.get("head_dim") or 0),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
