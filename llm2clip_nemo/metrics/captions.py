"""Caption retrieval accuracy (CRA) as the LLM2CLIP paper measures it, and the stricter all-pairs
variant: how well a text encoder keeps captions of one image together.

Conventions: the package docstring (`llm2clip_nemo.metrics`).
"""
from __future__ import annotations

import torch

from .retrieval import DEFAULT_BLOCK, DEFAULT_TIE_EPS, normalize, recall_at_k, retrieval_ranks


def _image_index(image_ids) -> torch.Tensor:
    if isinstance(image_ids, torch.Tensor):
        return image_ids.reshape(-1).long()
    lookup: dict = {}
    return torch.tensor([lookup.setdefault(i, len(lookup)) for i in image_ids], dtype=torch.long)


def _first_two_captions(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the first and the second caption of every image that has >= 2, in image order."""
    first: dict[int, int] = {}
    second: dict[int, int] = {}
    for pos, i in enumerate(ids.tolist()):
        if i not in first:
            first[i] = pos
        elif i not in second:
            second[i] = pos
    images = list(second)
    return torch.tensor([first[i] for i in images], dtype=torch.long), torch.tensor([second[i] for i in images],
                                                                                     dtype=torch.long)


def caption_retrieval_accuracy(caption_feats: torch.Tensor, image_ids, *, block_size: int = DEFAULT_BLOCK,
                               tie_eps: float = DEFAULT_TIE_EPS,
                               compute_dtype: torch.dtype = torch.float64) -> float:
    """CRA as LLM2CLIP reports it (COCO: Llama-3-8B 5.2, after the CC fine-tune 29.5), in percent:
    each image's first caption queries all images' second captions; top-1 accuracy.

    caption_feats [M, D] (any float dtype); image_ids [M] (any hashable per caption, or an integer
    tensor). An image's first and second captions are the first two rows carrying its id, in row
    order; images with a single caption take no part (neither query nor candidate). With N images of
    >= 2 captions there are N queries and N candidates; a query is a hit when its own image's second
    caption scores above every other image's second caption by more than `tie_eps` (pessimistic
    ties, as in `retrieval_ranks`). Protocol: LLM2CLIP (Huang et al., 2024, arXiv 2411.04997), as its
    authors describe their CRA evaluation. Raises ValueError when no image has 2 captions or the ids
    do not match the rows. See `caption_retrieval_all_pairs` for the every-caption-vs-every-caption
    variant.
    """
    ids = _image_index(image_ids)
    if ids.numel() != caption_feats.shape[0]:
        raise ValueError(f"{ids.numel()} image ids for {caption_feats.shape[0]} captions: give one id per caption.")
    first, second = _first_two_captions(ids)
    if first.numel() == 0:
        raise ValueError("CRA needs images with at least 2 captions; every image here has one.")
    dev = caption_feats.device
    ranks = retrieval_ranks(caption_feats[first.to(dev)], caption_feats[second.to(dev)],
                            torch.arange(first.numel()), block_size=block_size, tie_eps=tie_eps,
                            compute_dtype=compute_dtype)
    return recall_at_k(ranks.i2t, 1)


def caption_retrieval_all_pairs(caption_feats: torch.Tensor, image_ids, *, block_size: int = DEFAULT_BLOCK,
                                tie_eps: float = DEFAULT_TIE_EPS,
                                compute_dtype: torch.dtype = torch.float64) -> float:
    """All-pairs caption retrieval, in percent: how often a caption's nearest other caption describes
    the same image. Stricter than CRA (`caption_retrieval_accuracy`) and not comparable with the
    paper's CRA numbers: every caption queries, against every other caption.

    caption_feats [M, D]; image_ids [M] (any hashable per caption, or an integer tensor).
    Queries: every caption whose image has >= 2 captions. Candidates: ALL other captions of the
    set (itself excluded; single-caption images still act as distractors). A query is a hit when
    its single nearest candidate belongs to its own image; a wrong caption tied with the best own
    caption makes it a miss (pessimistic ties, like the retrieval metrics).
    """
    feats = normalize(caption_feats, compute_dtype)
    ids = _image_index(image_ids).to(feats.device)
    if ids.numel() != feats.shape[0]:
        raise ValueError(f"{ids.numel()} image ids for {feats.shape[0]} captions: give one id per caption.")
    _, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    queries = (counts[inverse] >= 2).nonzero().reshape(-1)
    if queries.numel() == 0:
        raise ValueError("caption retrieval needs images with at least 2 captions; every image here has one.")
    # A query hits iff its best wrong candidate scores below its best own one by more than tie_eps;
    # both are running maxima, so the [queries, M] scores are visited in 2-D blocks, never whole.
    n, neg_inf = feats.shape[0], torch.tensor(float("-inf"), dtype=feats.dtype, device=feats.device)
    best_own = torch.full((queries.numel(),), float("-inf"), dtype=feats.dtype, device=feats.device)
    best_wrong = best_own.clone()
    for q0 in range(0, queries.numel(), block_size):
        q = queries[q0:q0 + block_size]
        fq, iq = feats[q], ids[q][:, None]
        for c0 in range(0, n, block_size):
            cand = torch.arange(c0, min(c0 + block_size, n), device=feats.device)
            s = fq @ feats[cand].T
            same = iq == ids[cand][None, :]
            own = same & (q[:, None] != cand[None, :])
            best_own[q0:q0 + block_size].copy_(torch.maximum(best_own[q0:q0 + block_size],
                                                             torch.where(own, s, neg_inf).amax(1)))
            best_wrong[q0:q0 + block_size].copy_(torch.maximum(best_wrong[q0:q0 + block_size],
                                                               torch.where(same, neg_inf, s).amax(1)))
    hits = int((best_wrong < best_own - tie_eps).sum())
    return 100.0 * hits / queries.numel()
