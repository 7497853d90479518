"""Pooling of token states into one caption vector, shared by every teacher backend.

All modes are pad-aware: `mask` is 1 for tokens that count (real caption tokens, instruction
tokens already zeroed by the caller when they must not be pooled), 0 for padding.
"""
from __future__ import annotations

import torch

from ..formats.contract import check_pooling


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """hidden [B, S, H], mask [B, S] -> [B, H] in fp32.

    mean:          average of the masked tokens (llm2vec / LLM2CLIP default).
    last_token:    the state of the last masked token of each row (works for left and right padding).
    weighted_mean: position-weighted mean, weight i+1 for the i-th counted token (SGPT-style), which
                   favours later tokens that have seen more context under causal attention.
    """
    check_pooling(mode)
    h = hidden.float()
    m = mask.to(h.dtype)
    counts = m.sum(dim=1)
    if bool((counts == 0).any()):
        bad = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"rows {bad[:8]} have no tokens to pool: empty captions cannot be embedded.")
    if mode == "mean":
        return (h * m.unsqueeze(-1)).sum(1) / counts.unsqueeze(-1)
    if mode == "weighted_mean":
        w = torch.cumsum(m, dim=1) * m
        return (h * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True)
    # last_token: index of the last position whose mask is 1
    pos = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m > 0, pos, torch.full_like(pos, -1)).max(dim=1).values
    return h[torch.arange(h.shape[0], device=h.device), last]
