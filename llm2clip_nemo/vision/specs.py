"""Layer specs and the megatron TransformerConfig of the ViT.

Two implementations of the same block (pre-LN attention + pre-LN GELU MLP, biases everywhere):
- local: megatron's torch layers, with our `SDPACoreAttention` (bidirectional). megatron 0.16's
  own ViT local spec uses a causal mask and its `DotProductAttention` builds a causal mask whenever
  none is passed, so the spec sets `AttnMaskType.no_mask` and the core attention never masks.
- transformer_engine: TE fused LayerNorm+Linear and TE attention, also no_mask; needed for FP8.

The two name the input norms differently (TE fuses them into the following linear); both layouts
map onto one canonical (local) state dict with `to_canonical_keys` / `from_canonical_keys`.
"""
from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from llm2clip_nemo.runtime import probes

from .config import ViTConfig

if TYPE_CHECKING:
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_config import TransformerConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# TE layout name -> local (canonical) layout name, per layer.
_TE_TO_LOCAL = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "self_attention.linear_qkv.layer_norm_bias": "input_layernorm.bias",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
    "mlp.linear_fc1.layer_norm_bias": "pre_mlp_layernorm.bias",
}
_LOCAL_TO_TE = {v: k for k, v in _TE_TO_LOCAL.items()}


def resolve_impl(cfg: ViTConfig) -> str:
    """'local' or 'transformer_engine' for this config on this machine."""
    if cfg.transformer_impl == "auto":
        return "transformer_engine" if probes.transformer_engine().available else "local"
    if cfg.transformer_impl == "transformer_engine":
        te = probes.transformer_engine()
        if not te.available:
            raise RuntimeError(
                f"vision.transformer_impl='transformer_engine' but Transformer Engine is unusable here "
                f"({te.reason}): set vision.transformer_impl='auto' or 'local'."
            )
    return cfg.transformer_impl


def resolve_fp8(cfg: ViTConfig) -> bool:
    """Whether FP8 will be used; raises if requested on a machine without it (unless fp8_fallback)."""
    if not cfg.fp8:
        return False
    cap = probes.fp8_capable()
    if cap.available and resolve_impl(cfg) == "transformer_engine":
        return True
    why = cap.reason if not cap.available else "vision.transformer_impl='local' has no FP8 GEMMs"
    if cfg.fp8_fallback:
        warnings.warn(f"vision.fp8=true requested but FP8 is unavailable ({why}); running without FP8 "
                      "because vision.fp8_fallback=true.", stacklevel=2)
        return False
    raise RuntimeError(
        f"vision.fp8=true but FP8 is unavailable on this machine ({why}). FP8 needs Transformer Engine "
        "and an sm_89+/H100 GPU: set vision.fp8=false, or vision.fp8_fallback=true to run without it."
    )


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """Tanh-approximated GELU (HF 'gelu_pytorch_tanh', SigLIP's MLP activation)."""
    return F.gelu(x, approximate="tanh")


def activation_function(name: str):
    """The MLP activation of `ViTConfig.activation` ('gelu', 'quick_gelu', 'gelu_tanh')."""
    from megatron.core.activations import quick_gelu

    return {"quick_gelu": quick_gelu, "gelu_tanh": gelu_tanh}.get(name, F.gelu)


def transformer_config(cfg: ViTConfig) -> TransformerConfig:
    """The megatron `TransformerConfig` of the ViT blocks."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    use_fp8 = resolve_fp8(cfg)
    dtype = _DTYPES[cfg.params_dtype]
    kwargs = {}
    if cfg.recompute and torch.cuda.is_available():
        # megatron's CheckpointFunction saves CUDA RNG state, which fails on CPU: there the ViT
        # checkpoints each layer with torch.utils.checkpoint instead (VisionTransformer).
        kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    if use_fp8:
        kwargs.update(fp8="hybrid", fp8_recipe=cfg.fp8_recipe)
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.width,
        num_attention_heads=cfg.num_heads,
        ffn_hidden_size=cfg.mlp_dim,
        kv_channels=cfg.head_dim,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        layernorm_epsilon=cfg.layernorm_eps,
        normalization="LayerNorm",
        activation_func=activation_function(cfg.activation),
        gated_linear_unit=False,
        add_bias_linear=True,
        add_qkv_bias=True,
        init_method_std=cfg.init_std,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        tensor_model_parallel_size=1,
        **kwargs,
    )


class SDPACoreAttention(torch.nn.Module):
    """Bidirectional core attention for the local spec, on torch's fused SDPA kernel.

    Same call contract as megatron's DotProductAttention: q/k/v [s, b, heads, head_dim] in,
    [s, b, heads*head_dim] out. It never masks: every ViT token attends to every token.
    """

    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str = "self",
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None, **_unused):
        super().__init__()
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask=None,
                attn_mask_type=None, attention_bias=None, packed_seq_params=None) -> torch.Tensor:
        """Attention over all tokens; masks and packing are not used by the ViT."""
        if attention_mask is not None or attention_bias is not None or packed_seq_params is not None:
            raise ValueError("SDPACoreAttention is bidirectional: it takes no mask, bias or packing.")
        s, b, h, d = query.shape
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, scale=self.softmax_scale
        )
        return out.permute(2, 0, 1, 3).reshape(s, b, h * d)


@functools.cache
def single_rank_linears() -> tuple[type, type]:
    """(column, row) subclasses of megatron's parallel linears with a one-rank fast path.

    megatron's TP linears run their GEMMs through a custom autograd function built to overlap TP
    communication, and with `skip_bias_add` add the bias in a separate pass. On one rank (the ViT
    is never tensor-parallel) neither buys anything on CPU: the fast path computes
    `F.linear(x, W, b)` (one fused addmm, torch's own autograd) and returns `(y, None)`, bias
    already added, a contract megatron's MLP and bias-dropout-add accept. Parameters, state-dict
    keys and initialisation stay megatron's; with a TP group of more than one rank, or sequence
    parallelism, megatron's forward runs unchanged. (Measured: benchmarks/train_throughput.py.)
    """
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    def one_rank(layer) -> bool:
        group = getattr(layer, "tp_group", None)
        return (group is None or group.size() == 1) and not getattr(layer, "sequence_parallel", False)

    class SingleRankColumnLinear(ColumnParallelLinear):
        def forward(self, input_, weight=None, runtime_gather_output=None):
            if not one_rank(self):
                return super().forward(input_, weight=weight, runtime_gather_output=runtime_gather_output)
            return F.linear(input_, self.weight if weight is None else weight, self.bias), None

    class SingleRankRowLinear(RowParallelLinear):
        def forward(self, input_):
            if not one_rank(self):
                return super().forward(input_)
            return F.linear(input_, self.weight, self.bias), None

    return SingleRankColumnLinear, SingleRankRowLinear


def local_layer_spec() -> ModuleSpec:
    """Pre-LN block from megatron's local (torch) layers, with bidirectional SDPA attention."""
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.transformer.attention import (
        SelfAttention,
        SelfAttentionSubmodules,
    )
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_layer import (
        TransformerLayer,
        TransformerLayerSubmodules,
    )

    column_linear, row_linear = single_rank_linears()
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=WrappedTorchNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.no_mask},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=column_linear,
                    core_attention=SDPACoreAttention,
                    linear_proj=row_linear,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=WrappedTorchNorm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=column_linear,
                                                                linear_fc2=row_linear)),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def te_layer_spec() -> ModuleSpec:
    """The same block from Transformer Engine modules (fused LN+linear, TE attention), no mask."""
    from megatron.core.extensions.transformer_engine import (
        TEDotProductAttention,
        TELayerNormColumnParallelLinear,
        TERowParallelLinear,
    )
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.transformer.attention import (
        SelfAttention,
        SelfAttentionSubmodules,
    )
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.identity_op import IdentityOp
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_layer import (
        TransformerLayer,
        TransformerLayerSubmodules,
    )

    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.no_mask},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=TELayerNormColumnParallelLinear,
                    core_attention=TEDotProductAttention,
                    linear_proj=TERowParallelLinear,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=IdentityOp,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=TELayerNormColumnParallelLinear,
                                                                linear_fc2=TERowParallelLinear)),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def layer_spec(impl: str) -> ModuleSpec:
    """The block spec for 'local' or 'transformer_engine'."""
    return te_layer_spec() if impl == "transformer_engine" else local_layer_spec()


def _rename_layer_keys(sd: dict, table: dict) -> dict:
    out = {}
    for key, value in sd.items():
        head, sep, tail = key.partition(".layers.")
        if sep:
            idx, _, rest = tail.partition(".")
            if rest in table:
                key = f"{head}.layers.{idx}.{table[rest]}"
        out[key] = value
    return out


def to_canonical_keys(sd: dict, impl: str) -> dict:
    """A state dict of a model built with `impl` -> the canonical (local) layout. megatron's
    `_extra_state` entries (None for local linears, FP8 scaling metadata for TE) are dropped:
    they are not weights."""
    if impl == "transformer_engine":
        sd = _rename_layer_keys(sd, _TE_TO_LOCAL)
    return {k: v for k, v in sd.items() if not k.endswith("_extra_state")}


def from_canonical_keys(sd: dict, impl: str) -> dict:
    """The canonical (local) layout -> the key names of a model built with `impl`."""
    return dict(sd) if impl != "transformer_engine" else _rename_layer_keys(sd, _LOCAL_TO_TE)
