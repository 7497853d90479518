"""report.json / report.md content, PNG plots (size and drawn content), and the suite helpers."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from llm2clip_nemo import metrics
from llm2clip_nemo.eval import report, suite
from llm2clip_nemo.eval.manifest import from_samples

HIT_RGB, MISS_RGB = (0x1A, 0x98, 0x50), (0xD7, 0x30, 0x27)


def _count(png, rgb, tol=8):
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(a - np.array(rgb)).max(-1) <= tol).sum())


def test_report_json_round_trips_and_markdown_formats(tmp_path):
    sections = {
        "retrieval: flickr30k test": {
            "ours": {"i2t_R@1": 91.23456, "t2i_R@1": torch.tensor(80.5), "n_images": 1000},
            "clip|base": {"i2t_R@1": float("nan"), "cra": np.float64(29.5)},
        },
        "zero-shot: fmnist": {"ours": {"top1": 70.0, "top5": 99.999}},
    }
    png = report.plot_lines({"loss": [(0, 2.0), (1, 1.0)]}, tmp_path / "plots" / "loss.png")
    paths = report.write_report(tmp_path, sections, title="Eval", meta={"checkpoint": "/ckpt/a.nemo", "lr": 5e-4},
                                plots={"loss curve": png})
    data = json.loads(paths["json"].read_text())
    assert data["sections"]["retrieval: flickr30k test"]["ours"] == {"i2t_R@1": 91.23456, "t2i_R@1": 80.5,
                                                                     "n_images": 1000}
    assert data["sections"]["retrieval: flickr30k test"]["clip|base"] == {"i2t_R@1": None, "cra": 29.5}
    assert data["sections"]["zero-shot: fmnist"]["ours"]["top5"] == 99.999
    assert data["meta"] == {"checkpoint": "/ckpt/a.nemo", "lr": 5e-4}
    assert data["plots"] == {"loss curve": "plots/loss.png"}
    md = paths["md"].read_text()
    assert md.startswith("# Eval\n\n- **checkpoint**: /ckpt/a.nemo\n- **lr**: 0.0005\n")
    table = ("| model | i2t_R@1 | t2i_R@1 | n_images | cra |\n"
             "|---|---|---|---|---|\n"
             "| ours | 91.23 | 80.50 | 1000 |  |\n"
             "| clip\\|base | n/a |  |  | 29.50 |")
    assert "## retrieval: flickr30k test\n\n" + table in md
    assert "| ours | 70.00 | 100.00 |" in md
    assert "![loss curve](plots/loss.png)" in md


def test_markdown_table_explicit_columns_and_precision():
    t = report.markdown_table({"a": {"x": 1.0 / 3, "y": 2}}, columns=["y", "x"], precision=3, row_header="run")
    assert t == "| run | y | x |\n|---|---|---|\n| a | 2 | 0.333 |"


def test_recall_curves_png(tmp_path):
    curves = {"ours": {"i2t": [50, 70, 80, 90], "t2i": [40, 60, 75, 85]},
              "baseline": {"i2t": [10, 20, 30, 40], "t2i": [5, 10, 15, 20]}}
    p = report.plot_recall_curves(curves, tmp_path / "recall.png", title="R@k")
    img = Image.open(p)
    assert img.format == "PNG" and img.size == (1000, 400)
    assert _count(p, (0x1F, 0x77, 0xB4)) > 50 and _count(p, (0xFF, 0x7F, 0x0E)) > 50  # both models drawn
    assert report.plot_recall_curves(curves, tmp_path / "small.png", size_in=(6, 3), dpi=50).stat().st_size > 0
    assert Image.open(tmp_path / "small.png").size == (300, 150)


def test_lines_png(tmp_path):
    p = report.plot_lines({"train": [(s, 3.0 / (s + 1)) for s in range(20)], "val": [(0, 3.0), (10, 0.5)]},
                          tmp_path / "loss.png", title="loss", logy=True)
    assert Image.open(p).size == (700, 400)
    assert _count(p, (0x1F, 0x77, 0xB4)) > 50 and _count(p, (0xFF, 0x7F, 0x0E)) > 20


def test_retrieval_grids_png(tmp_path):
    blue = Image.new("RGB", (30, 20), (0, 0, 255))
    chw = torch.zeros(3, 16, 16)
    chw[1] = 1.0  # a green tensor image, CHW float
    long = "an extremely long caption " * 30
    p = report.plot_text_to_image_grid(["a blue box", long], [[blue, chw, blue], [blue]], tmp_path / "t2i.png",
                                       correct=[[True, False, False], [False]], title="t2i")
    img = Image.open(p)
    assert img.size == (4 * 160, 2 * 160)
    assert _count(p, (0, 0, 255), tol=2) > 1000 and _count(p, (0, 255, 0), tol=2) > 300
    assert _count(p, HIT_RGB) > 50 and _count(p, MISS_RGB) > 150
    q = report.plot_image_to_text_grid([np.full((10, 10, 3), 255, np.uint8)], [["one", long]], tmp_path / "i2t.png",
                                       correct=[[True, True]], cell_px=100)
    assert Image.open(q).size == (300, 100)
    assert _count(q, HIT_RGB) > 50 and _count(q, MISS_RGB) == 0


def test_wrap_caption_and_image_arrays():
    w = report.wrap_caption("word " * 100, width=20, max_lines=3)
    lines = w.split("\n")
    assert len(lines) == 3 and all(len(x) <= 20 for x in lines) and lines[-1].endswith("...")
    assert report.wrap_caption("short  text") == "short text"
    assert report.wrap_caption("x" * 50, width=10, max_lines=2) == "x" * 10 + "\n" + "x" * 7 + "..."
    assert report.to_image_array(torch.ones(3, 4, 5)).shape == (4, 5, 3)
    assert report.to_image_array(np.full((4, 4, 1), 2.0)).max() == 1.0


def test_evaluate_features_bundles_metrics():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(6, 8, generator=g)
    t2i = [0, 0, 1, 2, 2, 3, 4, 5, 5]
    txt = img[t2i] + 0.8 * torch.randn(9, 8, generator=g)
    out = suite.evaluate_features(img, txt, t2i, ks=(1, 5), curve_max_k=6)
    assert out["retrieval"] == metrics.retrieval_metrics(img, txt, t2i, ks=(1, 5))
    assert out["recall_curve"]["t2i"][4] == out["retrieval"]["t2i_R@5"] and len(out["recall_curve"]["i2t"]) == 6
    assert out["cra"] == metrics.caption_retrieval_accuracy(txt, t2i)
    row = suite.summary_row(out)
    assert row == {**out["retrieval"], "cra": out["cra"]} and list(row)[:2] == ["i2t_R@1", "i2t_R@5"]
    assert "cra" not in suite.evaluate_features(img, img, torch.arange(6))  # one caption per image
    zs = suite.evaluate_zeroshot(img, img[:3], [0, 1, 2, 0, 1, 2], ks=(1, 3))
    assert zs["top3"] == 100.0 and zs["top1"] >= 50.0


def test_examples_and_grids_from_eval_set(tmp_path):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    es = from_samples([{"image": Image.new("RGB", (8, 8), c), "captions": [f"color {c}", f"again {c}"]}
                       for c in colors])
    img = torch.eye(3)
    txt = img[es.text_to_image]
    txt[5] = img[0]  # the last caption of image 2 now matches image 0: a visible miss
    ex = suite.retrieval_examples(img, txt, es.text_to_image, n_queries=3, k=2)
    assert ex["t2i"].queries == [0, 2, 5] and ex["i2t"].queries == [0, 1, 2]
    assert ex["t2i"].retrieved[2][0] == 0 and ex["t2i"].correct[2][0] is False
    assert ex["t2i"].correct[0][0] is True
    assert ex["i2t"].retrieved[0] == [0, 1] and ex["i2t"].correct[0] == [True, True]
    paths = suite.plot_examples(es, ex, tmp_path, prefix="demo_")
    assert paths["t2i"].name == "demo_t2i_grid.png" and Image.open(paths["t2i"]).size == (3 * 160, 3 * 160)
    assert Image.open(paths["i2t"]).size == (3 * 160, 3 * 160)
    assert _count(paths["t2i"], MISS_RGB) > 0


def test_lines_rejects_bare_values(tmp_path):
    with pytest.raises(ValueError, match=r"series 'x' must be a list of \(step, value\) pairs"):
        report.plot_lines({"x": [1, 2]}, tmp_path / "x.png")


def test_metrics_import_without_matplotlib():
    code = ("import sys; import llm2clip_nemo.eval as e; e.evaluate_features; e.caption_retrieval_accuracy; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
