"""Scoring a `benchmarks.Benchmark` from encode callables, and the one results table.

Model-agnostic: `score_benchmark(bench, image_features, text_features)` takes
`image_features(list of image paths) -> [N, D]` and `text_features(list of str) -> [N, D]`.
Protocols (all scores cosine similarities, ties pessimistic within `tie_eps` as in `metrics`):
- retrieval: R@1/5/10 both ways over the benchmark's images; image->text is a hit when ANY of the
  image's captions is in its top k (Karpathy protocol; one caption per image for the long-caption
  sets);
- multilingual (XM3600): the same, per language over the images with a caption in it; the mean
  over languages of each R@k;
- pairs (SugarCrepe): per file, the percentage of (image, caption, negative) triples with
  cos(image, caption) > cos(image, negative) + tie_eps (a tie is a miss); the mean over files;
- zeroshot: CLIP's template ensemble (normalise each prompt, average, renormalise), top-1/top-5;
- cra: `metrics.caption_retrieval_accuracy` over the captions grouped by image.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from .. import metrics as M
from .bench_set import Benchmark
from .benchmarks import BENCHMARKS

Encode = Callable[[list], torch.Tensor]

LABELS = {"flickr30k": "Flickr30k", "coco": "COCO", "sharegpt4v": "ShareGPT4V", "urban1k": "Urban-1k",
          "docci": "DOCCI", "xm3600": "XM3600"}


def _texts(strings: Sequence[str], text_features: Encode) -> torch.Tensor:
    """Features of `strings` with every distinct string encoded once."""
    uniq = list(dict.fromkeys(strings))
    feats = text_features(uniq)
    row = {s: i for i, s in enumerate(uniq)}
    return feats[[row[s] for s in strings]]


def _retrieval(img: torch.Tensor, captions: list[str], image_index: list[int], text_features: Encode,
               ks: Sequence[int], tie_eps: float) -> dict:
    keep = sorted(set(image_index))  # images left without any caption cannot be scored image->text
    new = {old: i for i, old in enumerate(keep)}
    t2i = [new[i] for i in image_index]
    ranks = M.retrieval_ranks(img[keep], _texts(captions, text_features), t2i, tie_eps=tie_eps)
    return {**M.metrics_from_ranks(ranks, ks), "recall_curve": {"i2t": M.recall_curve(ranks.i2t, 10),
                                                                 "t2i": M.recall_curve(ranks.t2i, 10)}}


def pair_accuracy(img: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, tie_eps: float = M.DEFAULT_TIE_EPS) -> float:
    """Percent of rows where cos(img, pos) exceeds cos(img, neg) by more than tie_eps; all [N, D]."""
    i, p, n = M.normalize(img), M.normalize(pos), M.normalize(neg)
    return 100.0 * float((((i * p).sum(-1) - (i * n).sum(-1)) > tie_eps).double().mean())


def score_benchmark(bench: Benchmark, image_features: Encode | None, text_features: Encode, *,
                    llm_features: Encode | None = None, ks: Sequence[int] = (1, 5, 10),
                    tie_eps: float = M.DEFAULT_TIE_EPS) -> dict:
    """Scores of one benchmark (percentages; see the module doc for each protocol).

    llm_features: for CRA, the raw LLM embeddings as a second measure (`"llm"`) beside the text
    features (`"cra"`). Every result also has `n_images`, `skipped_by_reason` and `source`.
    """
    out: dict = {"benchmark": bench.name, "kind": bench.kind, "source": bench.source,
                 "n_images": len(bench.images), "skipped_by_reason": bench.reason_counts()}
    if bench.kind == "cra":
        g = bench.groups[""]
        out["cra"] = M.caption_retrieval_accuracy(_texts(g.captions, text_features), g.image_index, tie_eps=tie_eps)
        if llm_features is not None:
            out["llm"] = M.caption_retrieval_accuracy(_texts(g.captions, llm_features), g.image_index, tie_eps=tie_eps)
        out["n_captions"] = len(g.captions)
        return out
    img = image_features(list(bench.images)).double()
    if bench.kind == "retrieval":
        g = bench.groups[""]
        out.update(_retrieval(img, g.captions, g.image_index, text_features, ks, tie_eps))
    elif bench.kind == "multilingual":
        langs = {lang: _retrieval(img, g.captions, g.image_index, text_features, ks, tie_eps)
                 for lang, g in sorted(bench.groups.items())}
        for lang in langs.values():
            lang.pop("recall_curve")
        keys = [k for k in next(iter(langs.values())) if k.startswith(("i2t_", "t2i_"))]
        out["languages"] = langs
        out["mean"] = {k: sum(v[k] for v in langs.values()) / len(langs) for k in keys}
    elif bench.kind == "pairs":
        files = {}
        for name, g in bench.groups.items():
            files[name] = pair_accuracy(img[g.image_index], _texts(g.captions, text_features),
                                        _texts(g.negatives, text_features), tie_eps)
        out["files"] = files
        out["mean"] = sum(files.values()) / len(files)
    elif bench.kind == "zeroshot":
        cls = M.build_class_embeddings(bench.classnames, bench.templates, lambda p: _texts(p, text_features))
        zk = tuple(k for k in (1, 5) if k <= len(bench.classnames))
        out.update(M.zeroshot_classification(img, cls, bench.labels, ks=zk, tie_eps=tie_eps))
        out["n_classes"], out["n_templates"] = len(bench.classnames), len(bench.templates)
    else:
        raise ValueError(f"benchmark {bench.name}: unknown kind {bench.kind!r}.")
    return out


def run_benchmarks(models: Mapping[str, object], benches: Sequence[Benchmark], *, batch_size: int = 64,
                   log: Callable[[str], object] = print, groups=None) -> dict[str, dict[str, dict]]:
    """{model name: {benchmark: score}} for loaded benchmarks and {name: model} (any model
    `encoders.encoders_for` takes), each score `score_benchmark`'s dict plus "model" (in words).
    groups: the `runtime.ParallelLayout` to spread extraction over (`encoders.spread_groups`)."""
    from .encoders import model_scorers

    scorers = {m: model_scorers(model, batch_size, groups) for m, model in models.items()}
    results: dict[str, dict[str, dict]] = {m: {} for m in models}
    for bench in benches:
        log(bench.summary())
        for m, (img, txt, llm, describe) in scorers.items():
            results[m][bench.name] = {**score_benchmark(bench, img, txt, llm_features=llm), "model": describe}
    return results


# ---------------------------------------------------------------- the results table

def table_row(results: Mapping[str, dict]) -> dict[str, float]:
    """One model's row in the paper's layout: I2T/T2I R@1 per retrieval benchmark (Flickr30k, COCO,
    ShareGPT4V, Urban-1k, DOCCI, then XM3600's mean over languages), ImageNet top-1/top-5, CRA, and
    SugarCrepe's mean accuracy; only the benchmarks in `results` ({benchmark name: score})."""
    row: dict[str, float] = {}
    for name in BENCHMARKS:
        r = results.get(name)
        if r is None:
            continue
        if name in LABELS:
            src = r["mean"] if name == "xm3600" else r
            row[f"{LABELS[name]} I2T"], row[f"{LABELS[name]} T2I"] = src["i2t_R@1"], src["t2i_R@1"]
        elif name == "imagenet":
            row["ImageNet top-1"] = r["top1"]
            if "top5" in r:
                row["ImageNet top-5"] = r["top5"]
        elif name == "cra":
            row["CRA"] = r["cra"]
        elif name == "sugarcrepe":
            row["SugarCrepe"] = r["mean"]
    return row


def detail_sections(results: Mapping[str, Mapping[str, dict]]) -> dict[str, dict[str, dict]]:
    """{section: {model: {metric: value}}}: R@1/5/10 per retrieval set, XM3600 R@1 per language,
    SugarCrepe per file, zero-shot and CRA details."""
    sections: dict[str, dict[str, dict]] = {}
    for model, per in results.items():
        for name, r in per.items():
            if r["kind"] == "retrieval":
                vals = {k: v for k, v in r.items() if k.startswith(("i2t_", "t2i_")) or k in ("n_images", "n_texts")}
            elif r["kind"] == "multilingual":
                vals = {f"{lang} {d}": v[f"{d}_R@1"] for lang, v in r["languages"].items() for d in ("i2t", "t2i")}
            elif r["kind"] == "pairs":
                vals = {**r["files"], "mean": r["mean"]}
            elif r["kind"] == "zeroshot":
                vals = {k: r[k] for k in ("top1", "top5", "n_images", "n_classes", "n_templates") if k in r}
            else:
                vals = {k: r[k] for k in ("cra", "llm", "n_captions") if k in r}
            if r.get("skipped_by_reason"):
                vals["skipped"] = sum(r["skipped_by_reason"].values())
            sections.setdefault(f"{name} ({r['kind']}, %)", {})[model] = vals
    return sections


def write_benchmark_report(results: Mapping[str, Mapping[str, dict]], out_dir: str | Path, *,
                           meta: Mapping | None = None, plot: bool = True) -> dict[str, Path]:
    """report.json (table + every score), report.md (the table first, then details) and
    benchmarks.png (a bar per model and column) for {model: {benchmark: score_benchmark(...)}}."""
    import json

    from . import report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = {model: table_row(per) for model, per in results.items()}
    plots = {}
    if plot and any(table.values()):
        plots["results (paper layout)"] = report.plot_bars(table, out / "benchmarks.png",
                                                           title="LLM2CLIP benchmarks (%)")
    sections = {"results (paper layout: R@1 %, zero-shot top-k %, CRA %, SugarCrepe accuracy %)": table,
                **detail_sections(results)}
    paths = report.write_report(out, sections, title="LLM2CLIP benchmarks", meta=meta, plots=plots)
    full = json.loads(paths["json"].read_text())
    full["table"] = report.to_jsonable(table)
    full["results"] = report.to_jsonable(results)
    paths["json"].write_text(json.dumps(full, indent=2, allow_nan=False) + "\n")
    return {**paths, **({"plot": plots["results (paper layout)"]} if plots else {})}
