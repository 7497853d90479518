"""The demo's results: the summary of every measured number, the final table, the A/B rows, report.md."""
from __future__ import annotations

import json
import os
from pathlib import Path


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
    from ..eval import report

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

