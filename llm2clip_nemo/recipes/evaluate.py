"""`llm2clip-nemo evaluate --model PATH --data SPEC`: retrieval, long-caption retrieval, CRA and
zero-shot classification of an LLM2CLIP model, written as report.json, report.md and PNG plots.

    llm2clip-nemo evaluate --model runs/pretrain_tiny --data 'demo/test/shard-{000000..000001}.tar' \
        --caption-field txt,short_list --labels-field group --out eval/

Model: any layout `models.loading.load_llm2clip` accepts (run dir, .nemo, .ckpt, HF export), a stock
Hugging Face `CLIPModel` directory (its own text tower, as a baseline), or in Python an `LLM2CLIP`
(the HF inference class). The public benchmarks from their published files: `--benchmark NAME --root
DIR` (`recipes.benchmark`, `eval.benchmarks`). Data: webdataset shards (every sample once, in
order; captions from `txt` and/or json fields, a long caption from a json field, labels from a
json field) or a JSON manifest (`eval.manifest`: simple, Karpathy or COCO captions).

Tasks (default: every task the data supports):
- retrieval: image<->text R@1/5/10 over the caption fields, several captions per image
  (Flickr30k/COCO Karpathy protocol);
- long: one-to-one retrieval with the long caption (Urban-1k/DOCCI protocol);
- cra: caption retrieval accuracy by the LLM2CLIP paper's protocol (each image's first caption
  queries all images' second captions, top-1) and the stricter all-pairs variant (every caption
  against all others), on the adapter's text features and on the raw LLM embeddings;
- zeroshot: top-1/top-5 classification with class-name prompts (eval.templates).
Features are extracted data-parallel under torchrun (images over all ranks; captions over the
data-parallel group, so the ranks of one tensor-parallel teacher group encode the same captions).

Python API for the demo: `evaluate(model, data, ...) -> dict` per model, and
`write_comparison_report({name: result, ...}, out_dir)` to put several models in one report.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.errors import DataSourceError

TASKS = ("retrieval", "long", "cra", "zeroshot")


class EvalDataError(ValueError):
    """Evaluation data that cannot be used as given; the message names the source and the fix."""


@dataclass
class EvalData:
    """Images with retrieval captions, optional long captions and labels."""

    set: object
    """`eval.EvalSet`: images (encoded bytes or file paths), retrieval captions, text_to_image, labels."""
    long_captions: list[str | None] = field(default_factory=list)
    """Per image: its long caption, or None (empty list: the data has none)."""
    caption_fields: tuple[str, ...] = ("txt",)
    """Where the retrieval captions came from."""

    @property
    def n_long(self) -> int:
        return sum(c is not None for c in self.long_captions)

    def summary(self) -> str:
        s = self.set.summary()
        return s + (f"; {self.n_long} long captions" if self.n_long else "")


# ---- data -----------------------------------------------------------------------------------------

def _is_shard_manifest(path: Path) -> bool:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(obj, dict) and "shards" in obj


def load_shard_data(spec: str, caption_fields: Sequence[str] = ("txt",), long_field: str | None = "long",
                    labels_field: str | None = None, strict: bool = False, max_samples: int | None = None) -> EvalData:
    """Every sample of the shards in `spec` once, in order, images kept encoded.

    Samples go through `data.samples.check_sample` with the image decoded, so a sample is skipped
    for the same reason, under the same name, as in the training stream; a sample needs text in
    one of the caption fields, the long field or the labels field. strict: raise `EvalDataError`
    at the first problem, naming the shard and the sample key."""
    from ..data.samples import check_sample
    from ..data.spec import parse_sources
    from ..eval.manifest import EvalSet

    # every shard read through its Source, so energon excludes and field maps apply as in training
    reads = [(u, src) for src in parse_sources(spec) for u in src.urls]
    es = EvalSet(images=[], captions=[], text_to_image=[], keys=[], source=f"shards {spec}")
    fields = list(dict.fromkeys([*caption_fields, *(f for f in (long_field, labels_field) if f)]))
    longs, labels = [], []
    for url, src in reads:
        for raw in src.read(url):
            checked = check_sample(raw, fields, decode=True)
            key = raw.key or f"#{raw.index}"
            if strict and [r for r in checked.reasons if r != "excluded"]:  # excluded by the dataset: not a fault
                detail = f" ({checked.detail})" if checked.fatal else ""
                raise EvalDataError(f"{url}: sample {key}: {checked.reasons[0]}{detail}; fix the shard or run "
                                    "without --strict to skip and count such samples.")
            for r in checked.reasons:
                es.add_problem(r, f"{url}:{key}", fatal=r == checked.fatal)
            s = checked.sample
            if s is None:
                continue
            idx = len(es.images)
            es.images.append(s.image)
            es.keys.append(s.key)
            # one caption once per image: the demo's short_list repeats txt, and a duplicate would be
            # its own nearest neighbour (inflating CRA) and a free extra hit in retrieval
            caps = list(dict.fromkeys(c for f in caption_fields for c in s.captions(f)))
            es.captions.extend(caps)
            es.text_to_image.extend([idx] * len(caps))
            long = s.captions(long_field) if long_field else []
            longs.append(long[0] if long else None)
            label = s.meta.get(labels_field) if labels_field and s.meta else None
            if isinstance(label, list):
                label = label[0] if label else None
            labels.append(None if label is None else str(label))
            if max_samples and len(es.images) >= max_samples:
                break
        if max_samples and len(es.images) >= max_samples:
            break
    if not es.images:
        raise EvalDataError(f"no usable samples in {spec}: {es.summary()}")
    es.labels = labels if any(x is not None for x in labels) else []
    if labels_field and not es.labels:
        raise EvalDataError(f"--labels-field {labels_field!r}: no sample json of {spec} has that field.")
    return EvalData(es, longs if any(c is not None for c in longs) else [], tuple(caption_fields))


def load_eval_data(spec: str, caption_fields: Sequence[str] = ("txt",), long_field: str | None = "long",
                   labels_field: str | None = None, strict: bool = False, max_samples: int | None = None,
                   image_root: str | None = None, split: str | None = None) -> EvalData:
    """Shards (a brace pattern, directory or shard manifest.json) or an eval JSON manifest."""
    from ..eval.manifest import load_manifest

    p = Path(spec)
    if p.suffix in (".json", ".jsonl") and p.is_file() and not _is_shard_manifest(p):
        es = load_manifest(p, image_root=image_root, split=split, strict=strict)
        if max_samples and es.n_images > max_samples:
            keep = set(range(max_samples))
            es.images, es.keys = es.images[:max_samples], es.keys[:max_samples]
            es.labels = es.labels[:max_samples]
            pairs = [(c, i) for c, i in zip(es.captions, es.text_to_image) if i in keep]
            es.captions, es.text_to_image = [c for c, _ in pairs], [i for _, i in pairs]
        return EvalData(es, [], ("manifest",))
    return load_shard_data(spec, caption_fields, long_field, labels_field, strict, max_samples)


# ---- model adapters -------------------------------------------------------------------------------

@dataclass
class Encoders:
    """What evaluation needs from a model, whatever its class."""

    image: object
    """normalised pixels [B, 3, S, S] -> image features [B, D]."""
    llm: object
    """list of captions -> raw LLM embeddings [B, H]."""
    adapt: object
    """LLM embeddings [B, H] -> text features [B, D]."""
    image_size: int
    mean: list
    std: list
    image_group: object = None
    """Group to spread images over (None: this process does all)."""
    text_group: object = None
    """Group to spread captions over: ranks of one TP teacher group must get the same captions."""
    describe: str = ""


def _dist_groups(groups=None):
    """(image group, text group) of `groups` (default: this process's runtime.ParallelLayout):
    images over all ranks, captions over the teacher's data-parallel group. (None, None) alone."""
    from ..runtime import current_layout

    layout = groups or current_layout()
    if layout is None or layout.world_size == 1:
        return None, None
    return layout.vision_dp_group, layout.dp_group


def encoders_for(model) -> Encoders:
    """Encoders of an `LLM2CLIPModel` (Megatron teacher), an `LLM2CLIP` (exported, HF), or a
    `StockCLIP` (a stock HF CLIPModel: its own text tower, `adapt` the identity)."""
    from ..hf_model import LLM2CLIP
    from ..models.stock_clip import StockCLIP

    if isinstance(model, StockCLIP):
        img_g, txt_g = _dist_groups()
        return Encoders(model.get_image_features, model.get_text_features, lambda x: x, model.image_size,
                        model.mean, model.std, img_g, txt_g, f"stock CLIP {model.path}".strip())

    if isinstance(model, LLM2CLIP):
        t = model.config["export"]["model_config"]["train_ds"]["transform"]
        img_g, txt_g = _dist_groups()
        return Encoders(model.get_image_features, model.get_llm_embeddings, model.adapt, model.image_size,
                        t["mean"], t["std"], img_g, txt_g, "LLM2CLIP export")
    tc = model.typed
    img_g, txt_g = _dist_groups(model.groups)

    def llm(texts):
        return model.teacher.encode_texts(texts, batch_size=tc.teacher.batch_size,
                                          max_tokens=tc.teacher.max_tokens or None)

    info = getattr(model, "load_info", None)
    return Encoders(model.encode_images, llm, model.encode_teacher_embeddings, tc.vision.image_size,
                    list(tc.train_ds.transform.mean), list(tc.train_ds.transform.std), img_g, txt_g,
                    info.path if info is not None else "LLM2CLIPModel")


# ---- evaluation -----------------------------------------------------------------------------------

def _decode(item):
    from ..data.images import decode_image
    from ..hf_model import image_source

    return decode_image(image_source(item)).image


def _resolve_tasks(tasks, data: EvalData) -> list[str]:
    es = data.set
    available = {"retrieval": es.n_captions > 0, "long": data.n_long > 0,
                 "cra": _cra_groups(data) is not None, "zeroshot": bool(es.labels)}
    why = {"retrieval": "no captions in the caption fields", "long": "no long captions (--long-field)",
           "cra": "no image has 2 or more captions", "zeroshot": "no labels (--labels-field)"}
    if tasks in (None, "auto", ()):
        return [t for t in TASKS if available[t]]
    tasks = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise EvalDataError(f"unknown task(s) {unknown}: choose from {list(TASKS)} (comma-separated) or 'auto'.")
    missing = [t for t in tasks if not available[t]]
    if missing:
        raise EvalDataError(f"task {missing[0]!r} needs data the eval set lacks: {why[missing[0]]} in {es.source}.")
    return tasks


def _cra_groups(data: EvalData) -> tuple[list[str], list[int]] | None:
    """All distinct captions of each image (retrieval + long) with image ids, if some image has >= 2
    (an identical copy would be a caption's trivial nearest neighbour)."""
    pairs = dict.fromkeys([*zip(data.set.text_to_image, data.set.captions),
                           *((i, c) for i, c in enumerate(data.long_captions) if c is not None)])
    ids, caps = [i for i, _ in pairs], [c for _, c in pairs]
    counts = torch.bincount(torch.tensor(ids, dtype=torch.long)) if ids else torch.zeros(0)
    return (caps, ids) if bool((counts >= 2).any()) else None


def _plot_grids(es, img, txt, out: Path, prefix: str) -> dict[str, str]:
    """Top-5 grids for a few queries in both directions (images decoded only for those)."""
    from ..eval import report
    from ..eval.suite import retrieval_examples

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


def evaluate(model, data, tasks=None, out_dir: str | Path | None = None, *, name: str | None = None,
             batch_size: int = 64, templates: str | Sequence[str] = "single", caption_fields: Sequence[str] = ("txt",),
             long_field: str | None = "long", labels_field: str | None = None, strict: bool = False,
             max_samples: int | None = None, plots: bool = True, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Evaluate one model; returns its result dict (and writes a one-model report into out_dir).

    model: an `LLM2CLIPModel`, an `LLM2CLIP` export, or a path (any layout). data: an `EvalData`
    or a spec for `load_eval_data`. tasks: None/'auto' (what the data supports) or a list/comma
    string of retrieval, long, cra, zeroshot. templates: a set name ('single', 'short',
    'imagenet'), one prompt with '{}', or a list of prompts. Every rank must call this under torchrun; rank 0 writes.
    """
    import torch.distributed as dist

    from ..eval import features as F_
    from ..eval import metrics as M
    from ..eval.suite import evaluate_features
    from ..eval.templates import get_templates
    from ..hf_model import preprocess_images

    t0 = time.time()
    if isinstance(model, (str, Path)):
        from .benchmark import load_any_model

        model = load_any_model(str(model))
    if not isinstance(data, EvalData):
        data = load_eval_data(str(data), caption_fields, long_field, labels_field, strict, max_samples)
    enc = encoders_for(model)
    name = name or enc.describe
    task_list = _resolve_tasks(tasks, data)
    es = data.set
    rank0 = not dist.is_initialized() or dist.get_rank() == 0

    # 1. image features, data-parallel
    def image_batch(idx):
        return enc.image(preprocess_images([es.images[i] for i in idx], enc.image_size, enc.mean, enc.std)).float().cpu()

    img = F_.extract_features(list(range(es.n_images)), image_batch, batch_size, group=enc.image_group).cpu()

    # 2. every distinct text once through the LLM (captions, long captions, class prompts)
    classnames, prompts = [], []
    if "zeroshot" in task_list:  # on the labelled images (a sample may lack the label field)
        labelled = [i for i, x in enumerate(es.labels) if x is not None]
        classnames = sorted({es.labels[i] for i in labelled})
        if isinstance(templates, str):  # a set name, or one literal prompt such as "an emoji of {}"
            tpl = (templates,) if "{}" in templates else get_templates(templates)
        else:
            tpl = tuple(templates)
        prompts = [t.format(c) for c in classnames for t in tpl]
    texts = list(dict.fromkeys([*es.captions, *(c for c in data.long_captions if c is not None), *prompts]))
    row = {t: i for i, t in enumerate(texts)}
    raw = F_.extract_features(texts, lambda b: enc.llm(b).float().cpu(), batch_size, group=enc.text_group).cpu() \
        if texts else torch.zeros(0, 1)
    chunk = 16 * batch_size  # the adapter is cheap; chunks only bound its activation memory
    feats = torch.cat([enc.adapt(raw[i:i + chunk]).float().cpu() for i in range(0, len(raw), chunk)]) \
        if texts else raw

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
            result["plots"].update(_plot_grids(sub, img[keep], text_feats(sub.captions), out, prefix))
    if "long" in task_list:
        have = [i for i, c in enumerate(data.long_captions) if c is not None]
        lt = text_feats([data.long_captions[i] for i in have])
        r = evaluate_features(img[have], lt, torch.arange(len(have)), ks=ks, cra=False)
        result["long_retrieval"], result["long_recall_curve"] = r["retrieval"], r["recall_curve"]
    if "cra" in task_list:
        caps, ids = _cra_groups(data)
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


# ---- reports --------------------------------------------------------------------------------------

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
    from ..eval import report

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


# ---- CLI ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm2clip-nemo evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run dir, .nemo, .ckpt, or an export-hf directory")
    p.add_argument("--data", default=None, help="shards (brace pattern, dir, manifest.json) or an eval JSON manifest")
    p.add_argument("--benchmark", default=None, help="instead of --data: a public benchmark read from its published "
                                                     "files under --root (flickr30k, coco, sharegpt4v, urban1k, docci, "
                                                     "xm3600, sugarcrepe, imagenet, cra; a comma list; or all)")
    p.add_argument("--root", default=None, help="--benchmark: folder holding the benchmark folders (README layout)")
    p.add_argument("--baseline", default=None, help="--benchmark: a second model (e.g. a stock HF CLIPModel "
                                                    "directory) scored into the same table")
    p.add_argument("--tasks", default="auto", help=f"comma list of {','.join(TASKS)}, or auto (what the data has)")
    p.add_argument("--caption-field", default="txt", help="retrieval caption field(s), comma list: txt, or json keys "
                                                          "such as long, short_list")
    p.add_argument("--long-field", default="long", help="json field of the long caption ('' = none)")
    p.add_argument("--labels-field", "--classnames-field", dest="labels_field", default=None,
                   help="json field holding each sample's class name (zero-shot); manifests use 'label'")
    p.add_argument("--templates", default="single",
                   help="zero-shot prompts: a set (single, short, imagenet) or one prompt with {} for the class name")
    p.add_argument("--out", default="eval_report", help="output directory for report.json/.md and plots")
    p.add_argument("--strict", action="store_true", help="stop at the first bad sample (naming shard and key, or "
                                                         "manifest entry) instead of skipping and counting it")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--image-root", default=None, help="manifest: folder the image paths are relative to")
    p.add_argument("--split", default=None, help="manifest: keep this split (e.g. test)")
    p.add_argument("--teacher-path", default=None, help="teacher LLM location, if moved since training")
    p.add_argument("--tensor-parallel", type=int, default=1, help="teacher TP size to run with")
    p.add_argument("--name", default=None, help="model name in the report")
    p.add_argument("--no-plots", action="store_true")
    return p


def main(argv: list[str]) -> int:
    from ..config import ConfigError
    from ..eval.manifest import ManifestError
    from ..eval.report import markdown_table
    from ..models.loading import UnknownLayoutError
    from ..runtime import init_parallel
    from .benchmark import load_any_model

    args = build_parser().parse_args(argv)
    if args.benchmark:
        from .benchmark import main_benchmark

        return main_benchmark(args)
    if not args.data:
        print("llm2clip-nemo evaluate: error: give --data SPEC (shards or a manifest), or --benchmark NAME --root DIR.",
              file=sys.stderr)
        return 2
    try:
        data = load_eval_data(args.data, [f.strip() for f in args.caption_field.split(",") if f.strip()],
                              args.long_field or None, args.labels_field, args.strict, args.max_samples,
                              args.image_root, args.split)
        groups = init_parallel(args.tensor_parallel, field="--tensor-parallel")
        model = load_any_model(args.model, tensor_parallel=args.tensor_parallel, teacher_path=args.teacher_path,
                               groups=groups)
        res = evaluate(model, data, args.tasks, args.out, name=args.name or Path(args.model).name,
                       batch_size=args.batch_size, templates=args.templates, plots=not args.no_plots)
    except (EvalDataError, ManifestError, UnknownLayoutError, ConfigError, DataSourceError, ValueError,
            FileNotFoundError) as e:
        print(f"llm2clip-nemo evaluate: error: {e}", file=sys.stderr)
        return 2
    if groups.rank == 0:
        print(data.summary())
        for section, rows in report_sections({res["name"]: res}).items():
            print(f"\n{section}\n{markdown_table(rows)}")
        print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0
