"""`make demo`: the whole LLM2CLIP pipeline on the embedded default, on CPU.

    1. build the Twemoji demo shards (train / held-out concepts)
    2. stage 1: caption-contrastive LoRA on SmolLM2-135M (CRA before / after)
    3. `convert import-llm`: the merged CC-LLM into the Megatron teacher
    4. `extract`: sidecar embeddings from the CC teacher and from the raw SmolLM2 (the control)
    5. stage 2: the same tiny CLIP trained against each teacher (offline); A/B runs on the CC
       teacher, same steps and seeds: every caption of a sample per step, and EMA of the weights
    6. `evaluate` both on the held-out concepts (short-name and long-caption retrieval, CRA)
    7. `convert export-hf`, reload with `LLM2CLIP.from_pretrained`, check the scores are unchanged
    8. demo_out/report.md with plots, and a final table

Every number in the report comes from this run. `--fast` (DEMO_FAST=1) shrinks each stage.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .console import log, quiet_third_party, stage
from .report import ab_table, summarize, summary_table, write_report


@dataclass(frozen=True)
class DemoSize:
    """How much each stage of the demo does."""

    limit: int | None        # images in the demo dataset (None = all ~3.7k)
    stage1_steps: int
    stage2_steps: int
    val_max_images: int


# Sized for 2 CPU cores: a SmolLM2 forward costs ~0.27 GFLOP per token, so the caption budget
# (stage-1 steps, CRA set, images x 2 caption fields x 2 teachers to extract) sets the run time.
FULL = DemoSize(limit=400, stage1_steps=60, stage2_steps=250, val_max_images=100)
FAST = DemoSize(limit=120, stage1_steps=12, stage2_steps=30, val_max_images=24)


def run(out: Path, size: DemoSize) -> dict:
    from ..config import load_config
    from ..convert.hf_export import export_hf
    from ..convert.llm import import_llm
    from ..data.demo_dataset import build_demo_dataset
    from ..eval import evaluate, write_comparison_report
    from ..formats.hf_io import embedded_llm_dir
    from ..hf_model import LLM2CLIP
    from ..recipes import caption_contrastive as cc
    from ..recipes.extract import ExtractConfig, format_summary
    from ..recipes.extract import run as extract
    from ..recipes.train_clip import TrainCLIPConfig
    from ..recipes.train_clip import run as train_clip

    t_start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name, t0):
        timings[name] = round(time.time() - t0, 1)
        log(f"{name}: {timings[name]} s")

    stage("1/8 demo dataset (Twemoji + Unicode captions)")
    t0 = time.time()
    stale = out / "data" / "demo_info.json"
    if stale.is_file() and json.loads(stale.read_text()).get("params", {}).get("limit") != size.limit:
        log(f"{out} holds the dataset of another demo size: rebuilding it and its sidecars")
        for sub in ("data", "sidecars"):
            shutil.rmtree(out / sub, ignore_errors=True)
    ds = build_demo_dataset(str(out / "data"), limit=size.limit)
    log(f"{ds.n_train} train images ({ds.n_concepts_train} concepts), {ds.n_test} held-out images "
        f"({ds.n_concepts_test} concepts)")
    for w in ds.warnings:
        log(f"warning: {w}")
    train_dir, test_dir = out / "data" / "train", out / "data" / "test"
    timed("dataset", t0)

    stage("2/8 stage 1: caption-contrastive LoRA on SmolLM2-135M")
    t0 = time.time()
    raw_llm = embedded_llm_dir()
    # Stage 1 needs captions only: it trains on every training concept of the full demo dataset
    # (train_path=demo, built once in the cache; the concept split is the same, so the held-out
    # concepts stay unseen), and measures CRA on this run's held-out images.
    s1 = cc.run(cc.load("caption_contrastive_tiny", [
        "model.data.train_path=demo", f"model.data.val_path={test_dir}",
        f"model.data.val_max_images={size.val_max_images}", f"trainer.max_steps={size.stage1_steps}",
        f"trainer.val_check_interval={size.stage1_steps}", f"exp_manager.exp_dir={out / 'runs'}",
        "exp_manager.name=caption_contrastive", "exp_manager.resume_if_exists=false",
        f"exp_manager.checkpoint_every_n_steps={size.stage1_steps}"]))
    log(f"CRA on held-out concepts: before {s1['cra_before']:.1f}, after {s1['cra_after']:.1f} "
        f"(all pairs: before {s1['cra_all_pairs_before']:.1f}, after {s1['cra_all_pairs_after']:.1f})")
    timed("stage1", t0)

    stage("3/8 convert import-llm: CC-LLM -> Megatron teacher")
    t0 = time.time()
    cc_teacher = out / "teachers" / "smollm2-cc-megatron"
    if cc_teacher.exists():
        shutil.rmtree(cc_teacher)
    import_llm(s1["hf_merged"], cc_teacher, tp=1)
    timed("import", t0)

    stage("4/8 extract: sidecar embeddings from both teachers")
    t0 = time.time()
    teachers = {"cc": str(cc_teacher), "raw": str(raw_llm)}
    for tag, path in teachers.items():
        for split, d in (("train", train_dir), ("test", test_dir)):
            r = extract(load_config(ExtractConfig, "extract_tiny", [
                f"teacher.path={path}", f"data.urls={d}", f"data.sidecar_dir={out / 'sidecars' / tag / split}"]))
            log(f"[{tag}/{split}] " + format_summary(r).splitlines()[2])
    timed("extract", t0)

    stage("5/8 stage 2: tiny CLIP against the CC teacher and against the raw teacher; A/B runs on the CC teacher")
    t0 = time.time()
    runs = {}

    def stage2_overrides(tag):
        return [
            f"model.teacher.path={teachers[tag]}", f"model.train_ds.urls={train_dir}",
            f"model.train_ds.sidecar_dir={out / 'sidecars' / tag / 'train'}",
            f"model.validation_ds.urls={test_dir}", f"model.validation_ds.sidecar_dir={out / 'sidecars' / tag / 'test'}",
            f"model.validation_ds.every_n_steps={max(size.stage2_steps // 3, 1)}",
            f"trainer.max_steps={size.stage2_steps}", f"exp_manager.exp_dir={out / 'runs'}",
            f"exp_manager.name=clip_{tag}", "exp_manager.resume_if_exists=false",
            f"exp_manager.checkpoint_every_n_steps={size.stage2_steps}"]

    for tag in teachers:
        runs[tag] = train_clip(load_config(TrainCLIPConfig, "pretrain_tiny", stage2_overrides(tag)))
        v = runs[tag]["validation"][-1]
        log(f"[{tag}] loss {runs[tag]['losses'][0][1]:.3f} -> {runs[tag]['losses'][-1][1]:.3f}; held-out long-caption "
            f"R@1 i2t {v['i2t_R@1']:.1f} t2i {v['t2i_R@1']:.1f}")
    ab = {"one caption, no EMA": runs["cc"]}
    for label, extra in ab_variants(size.stage2_steps).items():  # same teacher, steps and seeds as runs["cc"]
        ab[label] = train_clip(load_config(TrainCLIPConfig, "pretrain_tiny", [
            *stage2_overrides("cc"), *extra, f"exp_manager.name=clip_cc_{label.replace(', ', '_').replace(' ', '_')}"]))
    summary_ab = {k: {m: r["validation"][-1][m] for m in ("i2t_R@1", "t2i_R@1")} for k, r in ab.items()}
    log(ab_table(summary_ab))
    timed("stage2", t0)

    stage("6/8 evaluate both models on the held-out concepts")
    t0 = time.time()
    results = {}
    names = {"cc": "LLM2CLIP (CC teacher)", "raw": "control (raw LLM teacher)"}
    for tag in teachers:
        results[names[tag]] = evaluate(runs[tag]["model"], str(test_dir), tasks="retrieval,long,cra",
                                       out_dir=out / "eval" / tag, name=names[tag], caption_fields=("txt",),
                                       long_field="long")
    timed("evaluate", t0)

    stage("7/8 export to Hugging Face and reload")
    t0 = time.time()
    export_dir = out / "export"
    if export_dir.exists():
        shutil.rmtree(export_dir)
    export_hf(runs["cc"]["log_dir"], export_dir)
    reloaded = LLM2CLIP.from_pretrained(export_dir)
    exported = evaluate(reloaded, str(test_dir), tasks="retrieval,long", out_dir=out / "eval" / "export",
                        name="export", caption_fields=("txt",), long_field="long", plots=False)
    timed("export", t0)

    stage("8/8 report")
    summary = summarize(s1, runs, results, exported, names, ds)
    summary["ab"] = summary_ab
    write_report(out, s1, runs, results, summary, timings, ds, write_comparison_report)
    summary["timings_s"] = timings
    summary["total_s"] = round(time.time() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n" + summary_table(summary) + "\n", flush=True)
    log(f"report: {out / 'report.md'} (total {summary['total_s']} s)")
    return summary


def ab_variants(steps: int) -> dict[str, list[str]]:
    """The demo's A/B variants of the CC-teacher run (issue 18 item 4), each changing one thing: every
    caption of a sample as positives (multi-positive InfoNCE), or an EMA of the weights averaging over
    about a fifth of the run (decay 1 - 5/steps, warm-up over the first tenth)."""
    return {"every caption, no EMA": ["model.train_ds.caption_sampling=all"],
            "one caption, EMA": ["model.ema.enabled=true", f"model.ema.decay={1 - 5 / steps:.4f}",
                                 f"model.ema.warmup_steps={max(steps // 10, 1)}"]}


def main(argv: list[str] | None = None) -> int:
    """`python -m llm2clip_nemo.demo [--out DIR] [--fast] [--verbose]`: run the demo; returns the exit code 0."""
    ap = argparse.ArgumentParser(prog="python -m llm2clip_nemo.demo")
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--fast", action="store_true", help="the < 5 minute variant (DEMO_FAST=1)")
    ap.add_argument("--verbose", action="store_true", help="print third-party (NeMo, megatron, Lightning) logs")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(os.cpu_count() or 1, 1))
    noise = None if a.verbose else quiet_third_party()
    run(Path(a.out), FAST if a.fast else FULL)
    if noise is not None:
        log(noise.summary())
    return 0
