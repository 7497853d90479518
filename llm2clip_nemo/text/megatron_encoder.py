"""The teacher: a Llama-family LLM built from megatron-core components, used as a caption encoder.

    embedding (vocab-parallel) -> RoPE -> TransformerBlock (RMSNorm, SwiGLU, GQA, final RMSNorm) -> pool

Families (LlamaSpec.family): Llama/Mistral as above; Qwen2 adds q/k/v biases (`add_qkv_bias`), Qwen3
per-head q/k RMSNorm (`qk_layernorm`); RoPE may be linear- or llama3-scaled (`rotary_embedding`).

No LM head: the teacher only needs the last hidden states. The layer spec is Transformer
Engine's when TE is usable (GPU), megatron-core's local spec otherwise (CPU), chosen here and
nowhere else. Megatron's [seq, batch, hidden] layout stays inside `forward`; the boundary is
`encode(token_ids [B, S], attention_mask [B, S]) -> [B, hidden]` in fp32.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..formats.contract import check_pooling
from ..formats.llama_spec import LlamaSpec, padded_vocab_size
from ..runtime import ParallelLayout, probes
from .pooling import pool


@dataclass(frozen=True)
class EncoderOptions:
    """How the teacher runs (the weights do not depend on these)."""

    bidirectional: bool = True
    """Padding-only attention mask (LLM2CLIP/llm2vec); False keeps the causal mask."""
    pooling: str = "mean"
    """mean | last_token | weighted_mean, pad-aware."""
    params_dtype: torch.dtype = torch.float32
    """Weight dtype: fp32 on CPU, bf16 on GPU."""
    use_te: bool | None = None
    """Transformer Engine layer spec: None = when usable, False = never, True = required."""


def _layer_spec(use_te: bool, bidirectional: bool, qk_norm: bool = False):
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )
    from megatron.core.transformer.enums import AttnMaskType

    if use_te:
        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_norm)
    else:
        spec = get_gpt_layer_local_spec(qk_layernorm=qk_norm, normalization="RMSNorm")
    spec = copy.deepcopy(spec)
    # The local softmax only builds a causal mask when none is given, so on the local spec we
    # always pass the full [B,1,S,S] mask (padding, plus causal when asked) and declare 'padding'.
    # TE needs the mask type to match: 'padding' or 'padding_causal' with a [B,1,1,S] mask.
    if use_te and not bidirectional:
        mask_type = AttnMaskType.padding_causal
    else:
        mask_type = AttnMaskType.padding
    spec.submodules.self_attention.params["attn_mask_type"] = mask_type
    return spec


def resolve_use_te(use_te: bool | None) -> bool:
    te = probes.transformer_engine()
    if use_te is True and not te.available:
        raise RuntimeError(f"use_te=True but Transformer Engine is unusable here ({te.reason}); set use_te=null.")
    return te.available if use_te is None else use_te


def transformer_config(spec: LlamaSpec, tp: int, params_dtype: torch.dtype):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_heads,
        num_query_groups=spec.num_kv_heads,
        kv_channels=spec.head_dim,
        ffn_hidden_size=spec.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=spec.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=spec.qkv_bias,
        qk_layernorm=spec.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tp,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=True,
        perform_initialization=False,  # weights come from a checkpoint
        apply_rope_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        bias_dropout_fusion=False,
    )


def rotary_embedding(spec: LlamaSpec):
    """megatron-core's RotaryEmbedding with the checkpoint's RoPE scaling.

    linear: positions divided by `factor` (`seq_len_interpolation_factor`; HF divides inv_freq,
    the same angles). llama3: megatron-core's `_apply_scaling` with all four of the config's
    parameters (its constructor only forwards `factor`), as in transformers' `_compute_llama3_parameters`.
    """
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    rope = RotaryEmbedding(kv_channels=spec.head_dim, rotary_percent=1.0, rotary_base=spec.rope_theta,
                           use_cpu_initialization=True,
                           seq_len_interpolation_factor=spec.rope_factor if spec.rope_type == "linear" else None)
    if spec.rope_type == "llama3":
        rope.inv_freq = rope._apply_scaling(rope.inv_freq, factor=spec.rope_factor,
                                            low_freq_factor=spec.rope_low_freq_factor,
                                            high_freq_factor=spec.rope_high_freq_factor,
                                            original_max_position_embeddings=spec.rope_original_max_position)
    return rope


class MegatronLlamaEncoder(nn.Module):
    """A frozen, tensor-parallel Llama encoder. Build, then `load_state_dict` a TP shard."""

    def __init__(self, spec: LlamaSpec, groups: ParallelLayout, options: EncoderOptions = EncoderOptions()):
        super().__init__()
        from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
        from megatron.core.transformer.transformer_block import TransformerBlock

        spec.check_tp(groups.tp_size, "teacher.tensor_parallel")
        check_pooling(options.pooling, "teacher.pooling")
        self.spec, self.groups, self.options = spec, groups, options
        self.use_te = resolve_use_te(options.use_te)
        self.config = transformer_config(spec, groups.tp_size, options.params_dtype)
        self.embedding = LanguageModelEmbedding(
            self.config, vocab_size=padded_vocab_size(spec.vocab_size, groups.tp_size),
            max_sequence_length=spec.max_position_embeddings, position_embedding_type="rope",
            tp_group=groups.tp_group,
        )
        self.rotary = rotary_embedding(spec)
        self.decoder = TransformerBlock(self.config, spec=_layer_spec(self.use_te, options.bidirectional, spec.qk_norm),
                                        post_layer_norm=True, pre_process=True, post_process=True,
                                        pg_collection=groups.pg_collection)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        """The teacher is frozen: eval mode is pinned, whatever a trainer asks."""
        return super().train(False)

    def _mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Boolean mask, True = do not attend. [B,1,1,S] for padding only, [B,1,S,S] with causal."""
        pad = ~attention_mask.bool()[:, None, None, :]
        if self.options.bidirectional or self.use_te:
            return pad
        s = attention_mask.shape[1]
        causal = torch.triu(torch.ones(s, s, dtype=torch.bool, device=attention_mask.device), diagonal=1)
        return pad | causal[None, None]

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, S] -> last hidden states [B, S, H] (after the final RMSNorm)."""
        b, s = input_ids.shape
        if s > self.spec.max_position_embeddings:
            raise ValueError(f"sequence length {s} exceeds max_position_embeddings={self.spec.max_position_embeddings}; "
                             "lower the tokenizer max_length.")
        if self.spec.sliding_window and s > self.spec.sliding_window:
            raise ValueError(f"sequence length {s} exceeds the model's sliding_window={self.spec.sliding_window}, which "
                             "the teacher does not reproduce; lower the tokenizer max_length.")
        position_ids = torch.arange(s, device=input_ids.device).unsqueeze(0).expand(b, s)
        x = self.embedding(input_ids=input_ids, position_ids=position_ids)  # [S, B, H]
        rope = self.rotary(s)
        h = self.decoder(hidden_states=x, attention_mask=self._mask(attention_mask), rotary_pos_emb=rope)
        return h.transpose(0, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return pool(self.hidden_states(input_ids, attention_mask), attention_mask, self.options.pooling)

    @torch.inference_mode()
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, S] token ids + mask -> [B, H] fp32. Every rank of the TP group must pass the same batch."""
        if input_ids.numel() == 0:
            raise ValueError("empty batch: pass at least one caption to encode.")
        dev = self.groups.device
        return self.forward(input_ids.to(dev), attention_mask.to(dev)).float()
