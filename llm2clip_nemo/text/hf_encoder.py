"""The Hugging Face encoder backend: a Llama-family causal LM used as a caption encoder.

Same switches as the Megatron teacher (bidirectional or causal attention, pooling), so it serves
as stage 1's trainable encoder (with peft LoRA on top) and as the reference the Megatron teacher
is tested against.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..formats.contract import check_pooling
from .pooling import pool
from .preparation import check_texts


def set_bidirectional(model: nn.Module, bidirectional: bool) -> None:
    """Switch a HF Llama-family model between causal and bidirectional attention.

    transformers builds a bidirectional (padding-only) mask when `config.is_causal` is False. The
    attention modules carry their own `is_causal` flag, which SDPA uses when the mask is elided
    (no padding in the batch), so both must be flipped or unpadded batches would stay causal.
    """
    cfg = getattr(model, "config", None)
    if cfg is not None:
        cfg.is_causal = not bidirectional
    for m in model.modules():
        if hasattr(m, "is_causal") and isinstance(m.is_causal, bool):
            m.is_causal = not bidirectional


def base_decoder(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (LlamaModel inside LlamaForCausalLM, also under peft)."""
    m = model
    for attr in ("base_model", "model"):
        # peft: PeftModel.base_model (LoraModel).model (LlamaForCausalLM).model (LlamaModel)
        while hasattr(m, attr) and m is not getattr(m, attr) and not hasattr(m, "layers"):
            m = getattr(m, attr)
    if not hasattr(m, "layers"):
        raise TypeError(f"{type(model).__name__} has no decoder layers to encode with.")
    return m


class HFEncoder(nn.Module):
    """`forward(input_ids, attention_mask, pool_mask=None) -> [B, H]` (differentiable).

    `pool_mask` selects which tokens are pooled (e.g. caption tokens without an instruction
    prefix); it defaults to `attention_mask`.
    """

    def __init__(self, model: nn.Module, tokenizer=None, pooling: str = "mean", bidirectional: bool = True):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = check_pooling(pooling)
        self.bidirectional = bidirectional
        set_bidirectional(model, bidirectional)

    @classmethod
    def from_pretrained(cls, path, pooling: str = "mean", bidirectional: bool = True,
                        dtype: torch.dtype = torch.float32) -> HFEncoder:
        from ..formats.hf_io import load_hf_causal_lm

        model, tok = load_hf_causal_lm(path, dtype=dtype)
        return cls(model, tok, pooling=pooling, bidirectional=bidirectional)

    @property
    def hidden_size(self) -> int:
        return base_decoder(self.model).config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pool_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = base_decoder(self.model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return pool(out.last_hidden_state, attention_mask if pool_mask is None else pool_mask, self.pooling)

    @torch.inference_mode()
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, S] token ids + mask -> [B, H] fp32, no grad."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(input_ids, attention_mask).float()
        finally:
            self.train(was_training)

    def tokenize(self, texts: Sequence[str], max_length: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize(self.tokenizer, texts, max_length)


def tokenize(tokenizer, texts: Sequence[str], max_length: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and mask for a list of captions. Rejects an empty list and empty strings."""
    texts = check_texts(texts)
    tokenizer.padding_side = "right"
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]
