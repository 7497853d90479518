"""Retrieval recall@k, zero-shot classification and caption retrieval accuracy (CRA, as the
LLM2CLIP paper measures it, and an all-pairs variant).

Conventions shared by every function here:
- Inputs are feature tensors (any float dtype, any device). They are L2-normalised here, in
  `compute_dtype` (float64 by default), so callers may pass raw model outputs; the score of a pair
  is the cosine similarity.
- Results are percentages in [0, 100], as LLM2CLIP and CLIP papers report them.
- Ties are broken pessimistically and deterministically: a wrong candidate whose score is within
  `tie_eps` of (or above) the right one's counts as ranked above it. So a model that maps
  everything to one vector scores 0, never "lucky", and the result does not depend on the order of
  the candidates or on BLAS summation order (`tie_eps` absorbs the rounding of the matmul).
- Work is blockwise (`block_size` rows x `block_size` columns of scores at a time), so 100k x 100k
  retrieval never materialises the full similarity matrix.
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


# ---------------------------------------------------------------- zero-shot classification

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


# ---------------------------------------------------------------- caption retrieval accuracy

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
