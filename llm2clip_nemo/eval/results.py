"""Evaluation results as reports: `write_comparison_report` puts several models' `evaluate` results
in one report.json / report.md with recall@k plots; `plot_retrieval_grids` draws example queries.

matplotlib loads only when a plot is drawn (`eval.report`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.images import decode_image
from ..hf_model import image_source
from .evalset import EvalSet
from .suite import retrieval_examples


def _decode(item):
    return decode_image(image_source(item)).image


def plot_retrieval_grids(es: EvalSet, img: torch.Tensor, txt: torch.Tensor, out: Path, prefix: str) -> dict[str, str]:
    """Top-5 grids for 4 queries in both directions, PNGs `out/{prefix}t2i_grid.png` and
    `{prefix}i2t_grid.png` (images decoded only for those). img [N_img, D], txt [N_txt, D] of `es`.
    Returns {caption: path} for the report."""
    from . import report

    ex = retrieval_examples(img, txt, es.text_to_image, n_queries=4, k=5)
    t, i = ex["t2i"], ex["i2t"]
    p1 = report.plot_text_to_image_grid([es.captions[q] for q in t.queries],
                                        [[_decode(es.images[j]) for j in row] for row in t.retrieved],
                                        out / f"{prefix}t2i_grid.png", correct=t.correct,
                                        title="text -> image: top retrieved images")
    p2 = report.plot_image_to_text_grid([_decode(es.images[q]) for q in i.queries],
                                        [[es.captions[j] for j in row] for row in i.retrieved],
                                        out / f"{prefix}i2t_grid.png", correct=i.correct,
                                        title="image -> text: top retrieved captions")
    return {"text -> image examples": str(p1), "image -> text examples": str(p2)}


def report_sections(results: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """{section: {model: {metric: value}}} for `eval.report.write_report`."""
    sections: dict[str, dict[str, dict]] = {}

    def add(section, model, values):
        sections.setdefault(section, {})[model] = values

    for model, r in results.items():
        if "retrieval" in r:
            add(f"retrieval ({', '.join(r.get('caption_fields', []))} captions, R@k %)", model, r["retrieval"])
        if "long_retrieval" in r:
            add("long-caption retrieval (one-to-one, R@k %)", model, r["long_retrieval"])
        if "cra" in r:
            add("caption retrieval accuracy (CRA %, paper protocol: 1st caption vs all 2nd captions)", model, r["cra"])
        if "cra_all_pairs" in r:
            add("all-pairs caption retrieval (%, each caption vs all others)", model, r["cra_all_pairs"])
        if "zeroshot" in r:
            add("zero-shot classification (top-k %)", model, r["zeroshot"])
    return sections


def write_comparison_report(results: dict[str, dict], out_dir: str | Path, title: str = "LLM2CLIP evaluation",
                            meta: dict | None = None) -> dict[str, Path]:
    """One report (report.json, report.md, recall@k plots) for several models' `evaluate` results;
    retrieval grids each model already wrote are linked. Returns the written paths."""
    from . import report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str | Path] = {}
    for key, label in (("recall_curve", "retrieval"), ("long_recall_curve", "long_retrieval")):
        curves = {m: r[key] for m, r in results.items() if key in r}
        if curves:
            plots[f"recall@k: {label}"] = report.plot_recall_curves(curves, out / f"{label}_recall_at_k.png",
                                                                    title=f"recall@k, {label.replace('_', ' ')}")
    for m, r in results.items():
        for caption, p in r.get("plots", {}).items():
            plots[f"{m}: {caption}"] = p
    info = {"data": next(iter(results.values()))["data_summary"] if results else "", **(meta or {})}
    for m, r in results.items():
        info[f"model {m}"] = r["model"]
    paths = report.write_report(out, report_sections(results), title=title, meta=info, plots=plots)
    full = json.loads(paths["json"].read_text())
    full["results"] = report.to_jsonable(results)
    paths["json"].write_text(json.dumps(full, indent=2, allow_nan=False) + "\n")
    return {**paths, **{k: Path(v) for k, v in plots.items()}}
