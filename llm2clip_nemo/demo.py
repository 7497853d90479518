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
import logging
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoSize:
    limit: int | None        # images in the demo dataset (None = all ~3.7k)
    stage1_steps: int
    stage2_steps: int
    val_max_images: int


# Sized for 2 CPU cores: a SmolLM2 forward costs ~0.27 GFLOP per token, so the caption budget
# (stage-1 steps, CRA set, images x 2 caption fields x 2 teachers to extract) sets the run time.
FULL = DemoSize(limit=400, stage1_steps=60, stage2_steps=250, val_max_images=100)
FAST = DemoSize(limit=120, stage1_steps=12, stage2_steps=30, val_max_images=24)


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class ThirdPartyNoise(logging.Filter):
    """Keeps the demo's screen for its own progress: NeMo's logger carries NeMo's INFO lines (the
    exp_manager schema dump) and every Python warning (NeMo captures warnings into it). Below ERROR
    they are dropped here and the warnings counted by the package they come from (summarised once at
    the end); this package's own warnings and every error still print. `--verbose` skips the filter."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if record.levelno >= logging.WARNING:
            text = record.getMessage()
            m = re.search(r"site-packages/([A-Za-z0-9_]+)", text)
            if m is None and "llm2clip_nemo" in text:
                return True
            self.counts[m.group(1) if m else record.name] += 1
        return False

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.counts.most_common())
        return f"third-party warnings not shown: {sum(self.counts.values())}" + (f" ({parts})" if parts else "") + \
            "; python -m llm2clip_nemo.demo --verbose shows them"


def quiet_third_party() -> ThirdPartyNoise:
    """Install `ThirdPartyNoise` on NeMo's logger and keep Lightning's accelerator banner out."""
    from nemo.utils import logging as nemo_logging  # noqa: F401  (creates 'nemo_logger', captures warnings)

    noise = ThirdPartyNoise()
    logging.getLogger("nemo_logger").addFilter(noise)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    return noise


def stage(title: str):
    log("=" * 8 + f" {title} " + "=" * 8)


def run(out: Path, size: DemoSize) -> dict:
    from .config import load_config
    from .convert.hf_export import export_hf
    from .convert.llm import import_llm
    from .data.demo_dataset import build_demo_dataset
    from .eval import evaluate, write_comparison_report
    from .formats.hf_io import embedded_llm_dir
    from .hf_model import LLM2CLIP
    from .recipes import caption_contrastive as cc
    from .recipes.extract import ExtractConfig, format_summary
    from .recipes.extract import run as extract
    from .recipes.train_clip import TrainCLIPConfig
    from .recipes.train_clip import run as train_clip

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


def _metric(res: dict, section: str, key: str):
    return res.get(section, {}).get(key)


def summarize(s1, runs, results, exported, names, ds) -> dict:
    cc_name, raw_name = names["cc"], names["raw"]
    rows = {}
    for label, name in (("cc", cc_name), ("raw", raw_name)):
        r = results[name]
        rows[label] = {
            "long_i2t_R@1": _metric(r, "long_retrieval", "i2t_R@1"), "long_t2i_R@1": _metric(r, "long_retrieval", "t2i_R@1"),
            "long_i2t_R@5": _metric(r, "long_retrieval", "i2t_R@5"), "long_t2i_R@5": _metric(r, "long_retrieval", "t2i_R@5"),
            "short_i2t_R@1": _metric(r, "retrieval", "i2t_R@1"), "short_t2i_R@1": _metric(r, "retrieval", "t2i_R@1"),
            "final_loss": runs[label]["losses"][-1][1],
        }
    ex = exported
    return {
        "dataset": {"train_images": ds.n_train, "test_images": ds.n_test, "test_concepts": ds.n_concepts_test},
        "cra_before": s1["cra_before"], "cra_after": s1["cra_after"],
        "cra_all_pairs_before": s1["cra_all_pairs_before"], "cra_all_pairs_after": s1["cra_all_pairs_after"],
        "clip": rows,
        "chance_R@1": 100.0 / max(results[cc_name].get("long_retrieval", {}).get("n_images", ds.n_test) or 1, 1),
        "export_equal": all(
            abs((_metric(ex, "long_retrieval", k) or 0) - (_metric(results[cc_name], "long_retrieval", k) or 0)) < 1e-6
            for k in ("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5")),
        "export_long_i2t_R@1": _metric(ex, "long_retrieval", "i2t_R@1"),
    }


def ab_variants(steps: int) -> dict[str, list[str]]:
    """The demo's A/B variants of the CC-teacher run (issue 18 item 4), each changing one thing: every
    caption of a sample as positives (multi-positive InfoNCE), or an EMA of the weights averaging over
    about a fifth of the run (decay 1 - 5/steps, warm-up over the first tenth)."""
    return {"every caption, no EMA": ["model.train_ds.caption_sampling=all"],
            "one caption, EMA": ["model.ema.enabled=true", f"model.ema.decay={1 - 5 / steps:.4f}",
                                 f"model.ema.warmup_steps={max(steps // 10, 1)}"]}


def ab_table(ab: dict) -> str:
    """Markdown rows: held-out long-caption R@1 (percent) of each A/B run at its final validation."""
    lines = ["| CC teacher, same steps and seeds | held-out long-caption R@1 image->text | text->image |",
             "|---|---|---|"]
    return "\n".join(lines + [f"| {k} | {v['i2t_R@1']:.1f} | {v['t2i_R@1']:.1f} |" for k, v in ab.items()])


def summary_table(s: dict) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.1f}"
    cc, raw = s["clip"]["cc"], s["clip"]["raw"]
    lines = [
        "| result | LLM2CLIP (CC teacher) | control (raw LLM teacher) |",
        "|---|---|---|",
        f"| stage 1 CRA (paper protocol: 1st caption vs all 2nd captions), held-out (before -> after) | "
        f"{f(s['cra_before'])} -> {f(s['cra_after'])} | {f(s['cra_before'])} |",
        f"| stage 1 all-pairs caption retrieval (each caption vs all others), held-out (before -> after) | "
        f"{f(s['cra_all_pairs_before'])} -> {f(s['cra_all_pairs_after'])} | {f(s['cra_all_pairs_before'])} |",
        f"| long-caption retrieval R@1 image->text | {f(cc['long_i2t_R@1'])} | {f(raw['long_i2t_R@1'])} |",
        f"| long-caption retrieval R@1 text->image | {f(cc['long_t2i_R@1'])} | {f(raw['long_t2i_R@1'])} |",
        f"| long-caption retrieval R@5 image->text | {f(cc['long_i2t_R@5'])} | {f(raw['long_i2t_R@5'])} |",
        f"| long-caption retrieval R@5 text->image | {f(cc['long_t2i_R@5'])} | {f(raw['long_t2i_R@5'])} |",
        f"| short-name retrieval R@1 image->text | {f(cc['short_i2t_R@1'])} | {f(raw['short_i2t_R@1'])} |",
        f"| short-name retrieval R@1 text->image | {f(cc['short_t2i_R@1'])} | {f(raw['short_t2i_R@1'])} |",
        f"| final training loss | {cc['final_loss']:.3f} | {raw['final_loss']:.3f} |",
        f"| chance R@1 | {f(s['chance_R@1'])} | {f(s['chance_R@1'])} |",
        f"| HF export reloaded, same scores | {'yes' if s['export_equal'] else 'NO'} | |",
    ]
    return "\n".join(lines)


def write_report(out: Path, s1, runs, results, summary, timings, ds, write_comparison_report) -> None:
    from .eval import report

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    report.plot_lines({"stage 1 InfoNCE": s1["loss_curve"]}, plots / "stage1_loss.png", title="stage 1 loss",
                      xlabel="step", ylabel="loss")
    report.plot_lines({f"{k} teacher": v["losses"] for k, v in runs.items()}, plots / "stage2_loss.png",
                      title="stage 2 CLIP loss", xlabel="step", ylabel="loss")
    comp = write_comparison_report(results, out / "eval" / "comparison", title="held-out concepts")
    md = ["# LLM2CLIP demo report", "",
          "Every number below was measured by this run of `make demo` (see summary.json).", "",
          f"Data: {ds.n_train} training images, {ds.n_test} held-out images of {ds.n_concepts_test} concepts never "
          "seen in training (Twemoji + Unicode captions).", "",
          summary_table(summary), "",
          "## What each addition does (A/B on the CC teacher)", "",
          "Held-out long-caption retrieval at each run's final validation (with the EMA weights in the EMA run).", "",
          ab_table(summary["ab"]), "",
          "## Plots", "", "![stage 1 loss](plots/stage1_loss.png)", "", "![stage 2 loss](plots/stage2_loss.png)", ""]
    for key, p in comp.items():
        if str(p).endswith(".png"):
            md += [f"![{key}]({os.path.relpath(p, out)})", ""]
    md += ["## Details", "", f"- full comparison: {os.path.relpath(comp['md'], out)}",
           f"- stage timings (s): {json.dumps(timings)}", "", ds.credits, ""]
    (out / "report.md").write_text("\n".join(md))


def main(argv: list[str] | None = None) -> int:
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


if __name__ == "__main__":
    raise SystemExit(main())
