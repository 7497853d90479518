"""Image-text retrieval: ranks of the right answers (blockwise, pessimistic ties), recall@k.

Conventions: the package docstring (`llm2clip_nemo.metrics`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_TIE_EPS = 1e-6
DEFAULT_BLOCK = 2048

ScoreBlock = Callable[[int, int, int, int], torch.Tensor]
"""`(i0, i1, j0, j1) -> scores[i0:i1, j0:j1]` of images (rows) vs texts (columns)."""


@dataclass(frozen=True)
class RetrievalRanks:
    """0-based rank of the right answer for each query (pessimistic ties)."""

    i2t: torch.Tensor
    """[N_img] wrong captions scoring >= the image's best own caption."""
    t2i: torch.Tensor
    """[N_txt] wrong images scoring >= the caption's own image."""


def normalize(feats: torch.Tensor, compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """L2-normalise rows in `compute_dtype`; a zero row stays zero (it then ties with everything)."""
    if feats.dim() != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(feats.shape)}")
    return F.normalize(feats.to(compute_dtype), dim=-1)


def _as_index(text_to_image, n_txt: int, n_img: int, device) -> torch.Tensor:
    t2i = torch.as_tensor(text_to_image, dtype=torch.long, device=device).reshape(-1)
    if t2i.numel() != n_txt:
        raise ValueError(f"text_to_image has {t2i.numel()} entries for {n_txt} captions: give one image index per caption.")
    if n_txt and (int(t2i.min()) < 0 or int(t2i.max()) >= n_img):
        raise ValueError(f"text_to_image holds indices in [{int(t2i.min())}, {int(t2i.max())}], outside [0, {n_img}).")
    counts = torch.bincount(t2i, minlength=n_img)
    if n_img and int(counts.min()) == 0:
        first = int((counts == 0).nonzero()[0])
        raise ValueError(
            f"{int((counts == 0).sum())} of {n_img} images have no caption (first: image {first}); "
            "image->text recall is undefined for them: drop them before evaluating."
        )
    return t2i


def _ranks_blockwise(score_block: ScoreBlock, pos: torch.Tensor, t2i: torch.Tensor, n_img: int,
                     block_size: int, tie_eps: float) -> RetrievalRanks:
    """Count, per query, the wrong candidates that score >= its right answer, one block at a time.

    `pos[j]` is the score of caption j with its own image. An image's right answer is its best
    caption; a caption's is its image. Both directions reuse the same score block.
    """
    n_txt = t2i.numel()
    device = pos.device
    best_own = torch.full((n_img,), float("-inf"), dtype=pos.dtype, device=device)
    best_own.scatter_reduce_(0, t2i, pos, reduce="amax")
    i2t = torch.zeros(n_img, dtype=torch.long, device=device)
    t2i_rank = torch.zeros(n_txt, dtype=torch.long, device=device)
    for i0 in range(0, n_img, block_size):
        i1 = min(i0 + block_size, n_img)
        rows = torch.arange(i0, i1, device=device)
        for j0 in range(0, n_txt, block_size):
            j1 = min(j0 + block_size, n_txt)
            s = score_block(i0, i1, j0, j1)
            wrong = t2i[j0:j1][None, :] != rows[:, None]
            i2t[i0:i1] += ((s >= best_own[i0:i1, None] - tie_eps) & wrong).sum(1)
            t2i_rank[j0:j1] += ((s >= pos[None, j0:j1] - tie_eps) & wrong).sum(0)
    return RetrievalRanks(i2t=i2t, t2i=t2i_rank)


def retrieval_ranks(image_feats: torch.Tensor, text_feats: torch.Tensor, text_to_image, *,
                    block_size: int = DEFAULT_BLOCK, tie_eps: float = DEFAULT_TIE_EPS,
                    compute_dtype: torch.dtype = torch.float64) -> RetrievalRanks:
    """Ranks of the right answers for image->text and text->image retrieval (see module doc)."""
    img = normalize(image_feats, compute_dtype)
    txt = normalize(text_feats, compute_dtype).to(img.device)
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"image features have dim {img.shape[1]} but text features have dim {txt.shape[1]}.")
    t2i = _as_index(text_to_image, txt.shape[0], img.shape[0], img.device)
    pos = (img[t2i] * txt).sum(-1)
    return _ranks_blockwise(lambda i0, i1, j0, j1: img[i0:i1] @ txt[j0:j1].T, pos, t2i, img.shape[0],
                            block_size, tie_eps)


def retrieval_ranks_from_similarity(sim: torch.Tensor, text_to_image, *, tie_eps: float = DEFAULT_TIE_EPS,
                                    block_size: int = DEFAULT_BLOCK) -> RetrievalRanks:
    """As `retrieval_ranks`, from a precomputed [N_img, N_txt] score matrix (no normalisation)."""
    sim = torch.as_tensor(sim)
    if sim.dim() != 2:
        raise ValueError(f"similarity must be [N_img, N_txt], got shape {tuple(sim.shape)}")
    sim = sim.to(torch.float64)
    t2i = _as_index(text_to_image, sim.shape[1], sim.shape[0], sim.device)
    pos = sim[t2i, torch.arange(sim.shape[1], device=sim.device)]
    return _ranks_blockwise(lambda i0, i1, j0, j1: sim[i0:i1, j0:j1], pos, t2i, sim.shape[0], block_size, tie_eps)


def recall_at_k(ranks: torch.Tensor, k: int) -> float:
    """Percentage of queries whose right answer is among the top k (rank < k)."""
    if ranks.numel() == 0:
        return float("nan")
    return 100.0 * float((ranks < k).double().mean())


def recall_curve(ranks: torch.Tensor, max_k: int) -> list[float]:
    """[R@1, R@2, ..., R@max_k] in percent (for recall@k plots)."""
    return [recall_at_k(ranks, k) for k in range(1, max_k + 1)]


def metrics_from_ranks(ranks: RetrievalRanks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """`i2t_R@k`, `t2i_R@k` for each k, and `mean_recall` (mean of all of them, 'rsum / 2len(ks)')."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_R@{k}"] = recall_at_k(ranks.i2t, k)
    for k in ks:
        out[f"t2i_R@{k}"] = recall_at_k(ranks.t2i, k)
    out["mean_recall"] = sum(out.values()) / len(out)
    out["n_images"] = int(ranks.i2t.numel())
    out["n_texts"] = int(ranks.t2i.numel())
    return out


def retrieval_metrics(image_feats: torch.Tensor, text_feats: torch.Tensor, text_to_image,
                      ks: Sequence[int] = (1, 5, 10), *, block_size: int = DEFAULT_BLOCK,
                      tie_eps: float = DEFAULT_TIE_EPS, compute_dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """Zero-shot retrieval recall@k in both directions.

    image_feats [N_img, D], text_feats [N_txt, D], text_to_image [N_txt]: the index of each
    caption's image. Image->text: an image is a hit at k if ANY of its captions is in its top k
    (Flickr30k/COCO Karpathy protocol). Text->image: a caption is a hit if its image is in its top k.
    The one-to-one long-caption protocol (Urban-1k, DOCCI, ShareGPT4V-1k) is
    `text_to_image = arange(N)`. Every image needs at least one caption.
    """
    ranks = retrieval_ranks(image_feats, text_feats, text_to_image, block_size=block_size, tie_eps=tie_eps,
                            compute_dtype=compute_dtype)
    return metrics_from_ranks(ranks, ks)


def top_retrievals(query_feats: torch.Tensor, cand_feats: torch.Tensor, k: int,
                   compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[Q, min(k, N)] indices of the best candidates per query, ties broken by lower index.

    For the few queries shown in report grids; materialises [Q, N] scores.
    """
    s = normalize(query_feats, compute_dtype) @ normalize(cand_feats, compute_dtype).to(query_feats.device).T
    return torch.sort(s, dim=1, descending=True, stable=True).indices[:, : min(k, s.shape[1])]
