"""`evaluate(model, data)`: the evaluation tasks of one model on one `EvalData`, as a result dict.

Tasks (default: every task the data supports):
- retrieval: image<->text R@1/5/10 over the caption fields, several captions per image
  (Flickr30k/COCO Karpathy protocol);
- long: one-to-one retrieval with the long caption (Urban-1k/DOCCI protocol);
- cra: caption retrieval accuracy by the LLM2CLIP paper's protocol (each image's first caption
  queries all images' second captions, top-1) and the stricter all-pairs variant (every caption
  against all others), on the adapter's text features and on the raw LLM embeddings;
- zeroshot: top-1/top-5 classification with class-name prompts (`eval.templates`).
Features are extracted data-parallel under torchrun (`eval.encoders.spread_groups`: images over all
ranks; captions over the teacher's data-parallel group), every distinct text once.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import metrics as M
from ..runtime import process_rank
from .data import EvalData, EvalDataError, load_eval_data
from .encoders import adapt_all, encoders_for, image_features_fn, load_any_model
from .features import extract_features
from .suite import evaluate_features
from .templates import get_templates

TASKS = ("retrieval", "long", "cra", "zeroshot")

_NEEDS = {"retrieval": "no captions in the caption fields", "long": "no long captions (--long-field)",
          "cra": "no image has 2 or more captions", "zeroshot": "no labels (--labels-field)"}


def cra_groups(data: EvalData) -> tuple[list[str], list[int]] | None:
    """All distinct captions of each image (retrieval + long) with image ids, if some image has >= 2
    (an identical copy would be a caption's trivial nearest neighbour); None otherwise."""
    pairs = dict.fromkeys([*zip(data.set.text_to_image, data.set.captions),
                           *((i, c) for i, c in enumerate(data.long_captions) if c is not None)])
    ids, caps = [i for i, _ in pairs], [c for _, c in pairs]
    counts = torch.bincount(torch.tensor(ids, dtype=torch.long)) if ids else torch.zeros(0)
    return (caps, ids) if bool((counts >= 2).any()) else None


def resolve_tasks(tasks, data: EvalData) -> list[str]:
    """The tasks to run, in `TASKS` order for None/'auto'/() (what the data supports), else as given
    (a list or a comma string). Raises `EvalDataError` naming an unknown task, or a task whose data
    the set lacks."""
    es = data.set
    available = {"retrieval": es.n_captions > 0, "long": data.n_long > 0,
                 "cra": cra_groups(data) is not None, "zeroshot": bool(es.labels)}
    if tasks in (None, "auto", ()):
        return [t for t in TASKS if available[t]]
    tasks = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise EvalDataError(f"unknown task(s) {unknown}: choose from {list(TASKS)} (comma-separated) or 'auto'.")
    missing = [t for t in tasks if not available[t]]
    if missing:
        raise EvalDataError(f"task {missing[0]!r} needs data the eval set lacks: {_NEEDS[missing[0]]} in {es.source}.")
    return tasks


def _prompt_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A set name ('single', 'short', 'imagenet'), one literal prompt with '{}', or a list of prompts."""
    if isinstance(templates, str):
        return (templates,) if "{}" in templates else get_templates(templates)
    return tuple(templates)


def evaluate(model, data, tasks=None, out_dir: str | Path | None = None, *, name: str | None = None,
             batch_size: int = 64, templates: str | Sequence[str] = "single", caption_fields: Sequence[str] = ("txt",),
             long_field: str | None = "long", labels_field: str | None = None, strict: bool = False,
             max_samples: int | None = None, plots: bool = True, ks: Sequence[int] = (1, 5, 10),
             groups=None) -> dict:
    """Evaluate one model; returns its result dict (and writes a one-model report into out_dir).

    model: an `LLM2CLIPModel`, an `LLM2CLIP` export, a `StockCLIP`, or a path (any layout
    `encoders.load_any_model` reads). data: an `EvalData` or a spec for `data.load_eval_data` (read
    with caption_fields, long_field, labels_field, strict, max_samples). tasks: None/'auto' (what the
    data supports) or a list/comma string of retrieval, long, cra, zeroshot. templates: a set name
    ('single', 'short', 'imagenet'), one prompt with '{}', or a list of prompts. groups: the
    `runtime.ParallelLayout` to spread extraction over (None: the model's own; `encoders.spread_groups`).
    Every rank must call this under torchrun; rank 0 writes. Recalls and accuracies are percentages.
    Raises `EvalDataError` for tasks the data cannot serve.
    """

    from .results import plot_retrieval_grids, write_comparison_report

    t0 = time.time()
    if isinstance(model, (str, Path)):
        model = load_any_model(str(model))
    if not isinstance(data, EvalData):
        data = load_eval_data(str(data), caption_fields, long_field, labels_field, strict, max_samples)
    enc = encoders_for(model, groups)
    name = name or enc.describe
    task_list = resolve_tasks(tasks, data)
    es = data.set
    rank0 = process_rank() == 0

    # 1. image features, data-parallel
    img = extract_features(list(range(es.n_images)), image_features_fn(enc, es.images), batch_size,
                           group=enc.image_group).cpu()

    # 2. every distinct text once through the LLM (captions, long captions, class prompts)
    classnames, prompts, tpl, labelled = [], [], (), []
    if "zeroshot" in task_list:  # on the labelled images (a sample may lack the label field)
        labelled = [i for i, x in enumerate(es.labels) if x is not None]
        classnames = sorted({es.labels[i] for i in labelled})
        tpl = _prompt_templates(templates)
        prompts = [t.format(c) for c in classnames for t in tpl]
    texts = list(dict.fromkeys([*es.captions, *(c for c in data.long_captions if c is not None), *prompts]))
    row = {t: i for i, t in enumerate(texts)}
    if texts:
        raw = extract_features(texts, lambda b: enc.llm(b).float().cpu(), batch_size, group=enc.text_group).cpu()
        feats = adapt_all(enc, raw, batch_size)
    else:
        raw = feats = torch.zeros(0, 1)

    def text_feats(strings, which=feats):
        return which[[row[s] for s in strings]]

    result: dict = {"name": name, "model": enc.describe, "data": es.source, "data_summary": data.summary(),
                    "n_images": es.n_images, "n_captions": es.n_captions, "skipped": es.n_skipped,
                    "skipped_by_reason": es.reason_counts(),
                    "caption_fields": list(data.caption_fields), "tasks": task_list, "plots": {}}
    out = Path(out_dir) if out_dir is not None else None
    prefix = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_") + "_"
    # 3. the tasks
    if "retrieval" in task_list:
        sub = es.captioned()
        keep = sorted(set(es.text_to_image))
        r = evaluate_features(img[keep], text_feats(sub.captions), sub.text_to_image, ks=ks, cra=False)
        result["retrieval"], result["recall_curve"] = r["retrieval"], r["recall_curve"]
        if out is not None and plots and rank0:
            result["plots"].update(plot_retrieval_grids(sub, img[keep], text_feats(sub.captions), out, prefix))
    if "long" in task_list:
        have = [i for i, c in enumerate(data.long_captions) if c is not None]
        lt = text_feats([data.long_captions[i] for i in have])
        r = evaluate_features(img[have], lt, torch.arange(len(have)), ks=ks, cra=False)
        result["long_retrieval"], result["long_recall_curve"] = r["retrieval"], r["recall_curve"]
    if "cra" in task_list:
        caps, ids = cra_groups(data)
        adapter_feats, llm_feats = text_feats(caps), text_feats(caps, raw)
        n_images = int((torch.bincount(torch.tensor(ids)) >= 2).sum())
        result["cra"] = {"adapter": M.caption_retrieval_accuracy(adapter_feats, ids),
                         "llm": M.caption_retrieval_accuracy(llm_feats, ids), "n_images": n_images}
        result["cra_all_pairs"] = {"adapter": M.caption_retrieval_all_pairs(adapter_feats, ids),
                                   "llm": M.caption_retrieval_all_pairs(llm_feats, ids), "n_captions": len(caps)}
    if "zeroshot" in task_list:
        index = {c: k for k, c in enumerate(classnames)}
        cls = M.build_class_embeddings(classnames, tpl, lambda p: text_feats(p))
        ks_z = tuple(k for k in (1, 5) if k <= len(classnames)) or (1,)
        z = M.zeroshot_classification(img[labelled], cls, [index[es.labels[i]] for i in labelled], ks=ks_z)
        result["zeroshot"] = {**z, "n_classes": len(classnames), "n_templates": len(tpl)}
    result["seconds"] = round(time.time() - t0, 2)
    if out is not None and rank0:
        write_comparison_report({name: result}, out, title=f"LLM2CLIP evaluation: {name}")
    return result
