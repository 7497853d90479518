"""Metrics bundled per task (`eval.tasks` calls them) and example queries for the report grids.
Model-agnostic: everything takes features.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import metrics as M
from .evalset import EvalSet


def evaluate_features(image_feats: torch.Tensor, text_feats: torch.Tensor, text_to_image, *,
                      ks: Sequence[int] = (1, 5, 10), curve_max_k: int = 10, cra: bool | None = None,
                      block_size: int = M.DEFAULT_BLOCK, tie_eps: float = M.DEFAULT_TIE_EPS) -> dict:
    """Retrieval (both directions), recall@1..curve_max_k curves, and optionally CRA.

    Returns {"retrieval": {"i2t_R@1": .., "t2i_R@1": .., "mean_recall": .., "n_images", "n_texts"},
    "recall_curve": {"i2t": [..], "t2i": [..]}, "cra": float (when computed)}, all in percent.
    cra: CRA of `text_feats` by the LLM2CLIP paper's protocol (`metrics.caption_retrieval_accuracy`:
    each image's first caption against all images' second captions, in `text_to_image` order); None
    computes it when some image has >= 2 captions.
    """
    ranks = M.retrieval_ranks(image_feats, text_feats, text_to_image, block_size=block_size, tie_eps=tie_eps)
    out = {
        "retrieval": M.metrics_from_ranks(ranks, ks),
        "recall_curve": {"i2t": M.recall_curve(ranks.i2t, curve_max_k), "t2i": M.recall_curve(ranks.t2i, curve_max_k)},
    }
    t2i = torch.as_tensor(text_to_image).reshape(-1)
    multi = bool((torch.bincount(t2i) >= 2).any()) if t2i.numel() else False
    if cra or (cra is None and multi):
        out["cra"] = M.caption_retrieval_accuracy(text_feats, t2i, block_size=block_size, tie_eps=tie_eps)
    return out


def summary_row(result: dict) -> dict:
    """One flat {metric: value} row for `report.write_report` from `evaluate_features` output."""
    row = dict(result.get("retrieval", {}))
    if "cra" in result:
        row["cra"] = result["cra"]
    return row


def evaluate_zeroshot(image_feats: torch.Tensor, class_embeddings: torch.Tensor, labels,
                      ks: Sequence[int] = (1, 5)) -> dict:
    """Top-k zero-shot accuracy; class_embeddings [C, D] (`build_class_embeddings`) or [C, T, D]."""
    return M.zeroshot_classification(image_feats, class_embeddings, labels, ks=ks)


@dataclass
class Examples:
    """Top-k results for a few queries, as indices into the eval set."""

    queries: list[int]
    """Query indices: captions for 't2i', images for 'i2t'."""
    retrieved: list[list[int]]
    """Per query, the top-k candidate indices (images for 't2i', captions for 'i2t')."""
    correct: list[list[bool]]
    """Per query and candidate: whether it is a right answer."""


def retrieval_examples(image_feats: torch.Tensor, text_feats: torch.Tensor, text_to_image, *,
                       n_queries: int = 4, k: int = 5) -> dict[str, Examples]:
    """Evenly spaced example queries in both directions with their top-k results."""
    t2i = torch.as_tensor(text_to_image).reshape(-1).tolist()

    def spread(n):
        m = min(n_queries, n)
        return [round(i * (n - 1) / max(m - 1, 1)) for i in range(m)]

    tq = spread(len(t2i))
    top_img = M.top_retrievals(text_feats[tq], image_feats, k).tolist()
    iq = spread(image_feats.shape[0])
    top_txt = M.top_retrievals(image_feats[iq], text_feats, k).tolist()
    return {
        "t2i": Examples(tq, top_img, [[i == t2i[q] for i in row] for q, row in zip(tq, top_img)]),
        "i2t": Examples(iq, top_txt, [[t2i[j] == q for j in row] for q, row in zip(iq, top_txt)]),
    }


def plot_examples(eval_set: EvalSet, examples: dict[str, Examples], out_dir: str | Path,
                  prefix: str = "") -> dict[str, Path]:
    """Write `{prefix}t2i_grid.png` and `{prefix}i2t_grid.png` for `retrieval_examples` output."""
    from . import report  # matplotlib only when plotting

    out = Path(out_dir)
    t, i = examples["t2i"], examples["i2t"]
    return {
        "t2i": report.plot_text_to_image_grid(
            [eval_set.captions[q] for q in t.queries],
            [[eval_set.load_image(j) for j in row] for row in t.retrieved],
            out / f"{prefix}t2i_grid.png", correct=t.correct, title="text -> image: top retrieved images"),
        "i2t": report.plot_image_to_text_grid(
            [eval_set.load_image(q) for q in i.queries],
            [[eval_set.captions[j] for j in row] for row in i.retrieved],
            out / f"{prefix}i2t_grid.png", correct=i.correct, title="image -> text: top retrieved captions"),
    }
