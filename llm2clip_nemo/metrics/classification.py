"""Zero-shot classification: nearest class embedding, class embeddings averaged over prompt
templates as CLIP builds them (Radford et al., 2021, "prompt ensembling").

Conventions: the package docstring (`llm2clip_nemo.metrics`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .retrieval import DEFAULT_BLOCK, DEFAULT_TIE_EPS, normalize, recall_at_k


def class_embeddings_from_templates(class_text_feats: torch.Tensor,
                                    compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[C, T, D] per-template text features -> [C, D]: normalise each, average, renormalise (CLIP)."""
    if class_text_feats.dim() == 2:
        return normalize(class_text_feats, compute_dtype)
    if class_text_feats.dim() != 3:
        raise ValueError(f"class_text_feats must be [C, D] or [C, T, D], got shape {tuple(class_text_feats.shape)}")
    per_template = F.normalize(class_text_feats.to(compute_dtype), dim=-1)
    return F.normalize(per_template.mean(1), dim=-1)


def zeroshot_ranks(image_feats: torch.Tensor, class_text_feats: torch.Tensor, labels, *,
                   block_size: int = DEFAULT_BLOCK, tie_eps: float = DEFAULT_TIE_EPS,
                   compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[N] number of wrong classes scoring >= the true class (pessimistic ties)."""
    img = normalize(image_feats, compute_dtype)
    cls = class_embeddings_from_templates(class_text_feats, compute_dtype).to(img.device)
    if img.shape[1] != cls.shape[1]:
        raise ValueError(f"image features have dim {img.shape[1]} but class embeddings have dim {cls.shape[1]}.")
    y = torch.as_tensor(labels, dtype=torch.long, device=img.device).reshape(-1)
    if y.numel() != img.shape[0]:
        raise ValueError(f"{y.numel()} labels for {img.shape[0]} images: give one class index per image.")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= cls.shape[0]):
        raise ValueError(f"labels hold class indices in [{int(y.min())}, {int(y.max())}], outside [0, {cls.shape[0]}).")
    ranks = torch.empty_like(y)
    for i0 in range(0, img.shape[0], block_size):
        s = img[i0:i0 + block_size] @ cls.T
        yb = y[i0:i0 + block_size]
        true = s.gather(1, yb[:, None])
        wrong = torch.ones_like(s, dtype=torch.bool).scatter_(1, yb[:, None], False)
        ranks[i0:i0 + block_size] = ((s >= true - tie_eps) & wrong).sum(1)
    return ranks


def zeroshot_classification(image_feats: torch.Tensor, class_text_feats: torch.Tensor, labels,
                            ks: Sequence[int] = (1, 5), **kw) -> dict[str, float]:
    """Top-k accuracy (percent) of nearest-class-embedding classification: `{"top1": .., "top5": ..}`.

    class_text_feats: [C, D] class embeddings, or [C, T, D] one per prompt template (templates are
    normalised, averaged, renormalised). labels: [N] class index per image. k >= C gives 100.
    """
    ranks = zeroshot_ranks(image_feats, class_text_feats, labels, **kw)
    out = {f"top{k}": recall_at_k(ranks, k) for k in ks}
    out["n_images"] = int(ranks.numel())
    return out


def build_class_embeddings(classnames: Sequence[str], templates: Sequence[str],
                           encode_text_fn: Callable[[list[str]], torch.Tensor], batch_size: int = 256) -> torch.Tensor:
    """Encode `template.format(classname)` for every class and template; return [C, D].

    Rows are normalised per template, averaged, renormalised (in float64, returned in the
    encoder's dtype).

    encode_text_fn maps a list of strings to a [len, D] tensor. Prompts are sent in batches of
    `batch_size` across class boundaries.
    """
    if not classnames or not templates:
        raise ValueError(f"need at least one class and one template, got {len(classnames)} and {len(templates)}.")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"template {bad[0]!r} has no '{{}}' placeholder for the class name.")
    prompts = [t.format(c) for c in classnames for t in templates]
    chunks = [encode_text_fn(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
    feats = torch.cat([torch.as_tensor(c) for c in chunks])
    if feats.shape[0] != len(prompts):
        raise ValueError(f"encode_text_fn returned {feats.shape[0]} rows for {len(prompts)} prompts.")
    cls = class_embeddings_from_templates(feats.reshape(len(classnames), len(templates), -1))
    return cls.to(feats.dtype) if feats.is_floating_point() else cls
