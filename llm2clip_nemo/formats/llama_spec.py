"""The Llama-family architecture (Llama 1-3.x, Mistral, Qwen2/2.5, Qwen3), read from a Hugging Face
config and checked once.

Both teacher backends and the converters take a `LlamaSpec`, so "which model is this" has one
answer and one set of error messages.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# model_type -> family name for messages. The family is read from model_type only: `architectures`
# may name a remote-code class (llm2vec's LlamaEncoderModel).
FAMILIES = {"llama": "Llama 1-3.x", "mistral": "Mistral", "qwen2": "Qwen2/Qwen2.5", "qwen3": "Qwen3"}
ROPE_TYPES = ("default", "linear", "llama3")
"""RoPE scalings megatron-core's RotaryEmbedding reproduces: none, linear position interpolation
(`seq_len_interpolation_factor`) and Llama-3.x's frequency-band scaling (`_apply_scaling`)."""


def supported_families() -> str:
    return ", ".join(f"{t} ({name})" for t, name in FAMILIES.items())


def padded_vocab_size(vocab: int, tp: int) -> int:
    """Rows of the vocab-parallel embedding: `vocab` rounded up to a multiple of `tp` (the extra rows
    are zeros, never indexed; the teacher's embedding and the key map's TP split both use it)."""
    return -(-vocab // tp) * tp


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class LlamaSpec:
    """Shape and numerics of a Llama-family decoder (RMSNorm, SwiGLU, RoPE, GQA), plus what the
    supported families add to it (Qwen2 q/k/v biases, Qwen3 q/k norms, RoPE scaling, head_dim)."""

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
    """Per-head width; 0 means hidden_size // num_heads (Mistral/Qwen3 may set it explicitly:
    megatron's `kv_channels`)."""
    family: str = "llama"
    """HF `model_type`: llama | mistral | qwen2 | qwen3 (see FAMILIES)."""
    qkv_bias: bool = False
    """q/k/v projections carry biases (Qwen2): megatron `add_qkv_bias`."""
    qk_norm: bool = False
    """Per-head RMSNorm on q and k before RoPE (Qwen3): megatron `qk_layernorm`."""
    rope_type: str = "default"
    """One of ROPE_TYPES."""
    rope_factor: float = 1.0
    """Scaling factor of `linear` and `llama3` RoPE."""
    rope_low_freq_factor: float = 1.0
    """llama3 RoPE: wavelengths above original_max_position / low_freq_factor are divided by factor."""
    rope_high_freq_factor: float = 4.0
    """llama3 RoPE: wavelengths below original_max_position / high_freq_factor are kept."""
    rope_original_max_position: int = 8192
    """llama3 RoPE: the context length the model was pre-trained with."""
    sliding_window: int = 0
    """Sliding-window attention span in tokens (Mistral v0.1); 0 = none. Sequences up to this length
    attend fully, so the teacher refuses longer ones instead of reproducing the window."""

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
        """From a transformers PretrainedConfig (or its dict); the family comes from `model_type`
        (never from `architectures`/`auto_map`, which may name remote code).

        Raises UnsupportedModelError naming the field and what is supported.
        """
        d = cfg if isinstance(cfg, dict) else cfg.to_dict()
        archs = d.get("architectures") or []
        family = d.get("model_type")
        if family not in FAMILIES:
            raise UnsupportedModelError(
                f"model_type {family!r} (architectures {archs}) is not supported; supported families: "
                f"{supported_families()}. Use a checkpoint of one of these families.")
        name = FAMILIES[family]
        if d.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act={d.get('hidden_act')!r} is not supported; {name} uses silu (SwiGLU).")
        if d.get("mlp_bias"):
            raise UnsupportedModelError(f"mlp_bias=True is not supported: {name} teachers have no MLP biases.")
        if family != "qwen2" and d.get("attention_bias"):
            raise UnsupportedModelError(f"attention_bias=True is not supported for {family}: only Qwen2's q/k/v "
                                        "biases are (o_proj has none there).")
        rope = dict(d.get("rope_parameters") or {})
        rope.update(d.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type")) or "default"
        if rope_type not in ROPE_TYPES:
            raise UnsupportedModelError(
                f"rope_scaling rope_type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)} "
                "(what megatron-core's RotaryEmbedding implements). Use a checkpoint with one of these.")
        theta = d.get("rope_theta") or rope.get("rope_theta") or 10000.0
        window = d.get("sliding_window") or 0
        if family in ("qwen2", "qwen3"):  # the window applies only when switched on
            layer_types = d.get("layer_types") or []
            if not (d.get("use_sliding_window") or "sliding_attention" in layer_types):
                window = 0
        needs = {"linear": ["factor"], "llama3": ["factor", "low_freq_factor", "high_freq_factor",
                                                   "original_max_position_embeddings"]}.get(rope_type, [])
        missing = [k for k in needs if rope.get(k) is None]
        if missing:
            raise UnsupportedModelError(f"rope_scaling rope_type {rope_type!r} lacks {missing}: complete config.json's "
                                        "rope_scaling from the model's original release.")
        extra = {}
        if rope_type in ("linear", "llama3"):
            extra["rope_factor"] = float(rope["factor"])
        if rope_type == "llama3":
            extra.update(rope_low_freq_factor=float(rope["low_freq_factor"]),
                         rope_high_freq_factor=float(rope["high_freq_factor"]),
                         rope_original_max_position=int(rope["original_max_position_embeddings"]))
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
            family=family,
            qkv_bias=family == "qwen2",
            qk_norm=family == "qwen3",
            rope_type=rope_type,
            sliding_window=int(window),
            **extra,
        )

    def param_count(self, lm_head: bool = False) -> int:
        """Parameters of the decoder (embedding, layers, final norm), plus an untied LM head when
        `lm_head`. Counts what the family adds: head_dim != hidden/heads, Qwen2's q/k/v biases,
        Qwen3's q/k norms. Equals the numel of transformers' `*Model` (tested per family)."""
        h, hd, f = self.hidden_size, self.head_dim, self.ffn_hidden_size
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        attn = h * (q + 2 * kv) + q * h + (q + 2 * kv if self.qkv_bias else 0) + (2 * hd if self.qk_norm else 0)
        per_layer = attn + 3 * h * f + 2 * h
        head = self.vocab_size * h if lm_head and not self.tie_word_embeddings else 0
        return self.vocab_size * h + self.num_layers * per_layer + h + head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
