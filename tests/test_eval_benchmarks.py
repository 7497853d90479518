"""Public benchmarks (issue 17): each replica, written in its published file format, loads and
scores to the hand computation in `bench_fixtures`; recall equals clip_benchmark's own code;
missing or malformed files are one line and exit code 2."""
from __future__ import annotations

import builtins
import importlib.util
import json

import pytest
import torch
from bench_fixtures import (
    CRA_EXPECTED,
    IN_EXPECTED_TOP1,
    IN_IMG,
    KARPATHY_CURVE_I2T_R2,
    KARPATHY_EXPECTED,
    KARPATHY_IMG,
    KARPATHY_TXT,
    LONG_TXT,
    ONE_EXPECTED,
    ONE_IMG,
    SC_EXPECTED,
    SC_IMG,
    SC_TXT,
    XM_DE,
    XM_EXPECTED,
    FakeModel,
    imagenet_txt,
    write_docci,
    write_imagenet,
    write_karpathy,
    write_sharegpt4v,
    write_sugarcrepe,
    write_urban1k,
    write_xm3600,
)

from llm2clip_nemo import metrics as M
from llm2clip_nemo.eval.bench_run import score_benchmark, table_row, write_benchmark_report
from llm2clip_nemo.eval.benchmarks import BenchmarkError, find_benchmarks, load_benchmark
from llm2clip_nemo.eval.templates import IMAGENET_TEMPLATES


def _score(name, root, img, txt, **kw):
    fake = FakeModel(img, txt)
    b = load_benchmark(name, root, **kw)
    return b, score_benchmark(b, fake.image_features, fake.text_features), fake


def _assert_close(got: dict, expected: dict):
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k


@pytest.mark.parametrize("dataset", ["coco", "flickr30k"])
def test_karpathy_test_split_scores_by_hand_and_counts_what_it_skips(tmp_path, dataset):
    write_karpathy(tmp_path, dataset)
    b, r, fake = _score(dataset, tmp_path, KARPATHY_IMG, KARPATHY_TXT)
    _assert_close(r, KARPATHY_EXPECTED)
    assert r["recall_curve"]["i2t"][1] == pytest.approx(KARPATHY_CURVE_I2T_R2)
    assert (r["n_images"], r["n_texts"]) == (3, 5)
    assert r["skipped_by_reason"] == {"bad_caption": 3, "missing_image": 1}
    assert "never encoded" not in " ".join(fake.texts_seen)  # train, restval and a sixth sentence left out
    with pytest.raises(BenchmarkError, match=r"images\[0\].sentences\[2\]: caption is null, blank or not a string"):
        load_benchmark(dataset, tmp_path, strict=True)  # strict stops at the first problem


def test_cra_on_coco_captions_by_hand(tmp_path):
    write_karpathy(tmp_path, "coco")
    b, r, _ = _score("cra", tmp_path, {}, KARPATHY_TXT)
    assert b.images == [] and r["cra"] == pytest.approx(CRA_EXPECTED)
    assert r["n_captions"] == 6  # the image whose file is missing still has its caption: CRA reads no images
    llm = FakeModel({}, {k: -v for k, v in KARPATHY_TXT.items()})
    r2 = score_benchmark(b, None, FakeModel({}, KARPATHY_TXT).text_features, llm_features=llm.text_features)
    assert r2["cra"] == pytest.approx(CRA_EXPECTED) and r2["llm"] == pytest.approx(CRA_EXPECTED)


@pytest.mark.parametrize("name,writer", [("urban1k", write_urban1k), ("docci", write_docci),
                                         ("sharegpt4v", write_sharegpt4v)])
def test_one_caption_per_image_sets_score_by_hand(tmp_path, name, writer):
    writer(tmp_path)
    b, r, fake = _score(name, tmp_path, ONE_IMG, LONG_TXT)
    _assert_close(r, ONE_EXPECTED)
    assert (r["n_images"], r["n_texts"]) == (3, 3)
    skipped = {"urban1k": {"corrupt_image": 1, "missing_image": 1, "truncated_image": 1}, "docci": {},
               "sharegpt4v": {"missing_image": 997}}[name]
    assert r["skipped_by_reason"] == skipped
    assert sorted(set(fake.texts_seen)) == sorted(LONG_TXT)  # first caption line; newlines as spaces; 1,000 cut


def test_xm3600_recall_per_language_and_mean(tmp_path):
    write_xm3600(tmp_path)
    _, r, _ = _score("xm3600", tmp_path, ONE_IMG, {**LONG_TXT, **XM_DE})
    for lang, exp in XM_EXPECTED.items():
        _assert_close(r["languages"][lang], exp)
    assert r["languages"]["de"]["n_texts"] == 6
    assert r["mean"]["i2t_R@1"] == pytest.approx((100 / 3 + 100) / 2)
    assert r["mean"]["t2i_R@1"] == pytest.approx((200 / 3 + 100) / 2)


def test_sugarcrepe_accuracy_per_file_ties_are_misses(tmp_path):
    write_sugarcrepe(tmp_path)
    _, r, _ = _score("sugarcrepe", tmp_path, SC_IMG, SC_TXT)
    _assert_close(r["files"], SC_EXPECTED)
    assert r["mean"] == pytest.approx(550 / 7)


def test_imagenet_zero_shot_with_the_80_templates(tmp_path):
    write_imagenet(tmp_path)
    b, r, fake = _score("imagenet", tmp_path, IN_IMG, imagenet_txt(IMAGENET_TEMPLATES))
    assert b.classnames == ["dog", "cat"] and b.labels == [0, 1, 1]
    assert r["top1"] == pytest.approx(IN_EXPECTED_TOP1) and "top5" not in r  # 2 classes: top-5 is undefined
    assert (r["n_classes"], r["n_templates"]) == (2, 80) and len(set(fake.texts_seen)) == 160
    (tmp_path / "imagenet" / "classnames.txt").write_text("dog\n")
    with pytest.raises(BenchmarkError, match="lists 1 class names but .* has 2 class folders"):
        load_benchmark("imagenet", tmp_path)


def _clip_benchmark_module(name):
    """clip_benchmark's metric module file alone: no package __init__ runs, so nothing pulls torchvision
    or open_clip (installed --no-deps, clip-benchmark has neither here)."""
    pkg = importlib.util.find_spec("clip_benchmark")  # locates the package without executing it
    path = f"{pkg.submodule_search_locations[0]}/metrics/{name}.py"
    spec = importlib.util.spec_from_file_location(f"cb_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_recall_equals_clip_benchmark_with_several_captions_per_image():
    zr = _clip_benchmark_module("zeroshot_retrieval")
    g = torch.Generator().manual_seed(0)
    n_img, d = 40, 16
    t2i = torch.cat([torch.arange(n_img).repeat_interleave(2), torch.randint(0, n_img, (37,), generator=g)])
    img = torch.randn(n_img, d, generator=g)
    txt = img[t2i] + 1.2 * torch.randn(len(t2i), d, generator=g)  # noisy captions: some hits, some misses
    ours = M.retrieval_metrics(img, txt, t2i, ks=(1, 5, 10))
    # clip_benchmark's evaluate(): scores texts x images of normalised features, positives, recall > 0
    i_n, t_n = torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
    scores = t_n @ i_n.t()
    pos = torch.zeros_like(scores, dtype=torch.bool)
    pos[torch.arange(len(scores)), t2i] = True
    for k in (1, 5, 10):
        t2i_cb = (zr.batchify(zr.recall_at_k, scores, pos, 64, "cpu", k=k) > 0).float().mean().item()
        i2t_cb = (zr.batchify(zr.recall_at_k, scores.T, pos.T, 64, "cpu", k=k) > 0).float().mean().item()
        assert ours[f"t2i_R@{k}"] / 100 == pytest.approx(t2i_cb, abs=1e-6)
        assert ours[f"i2t_R@{k}"] / 100 == pytest.approx(i2t_cb, abs=1e-6)
    assert 0 < ours["i2t_R@1"] < 100 and 0 < ours["t2i_R@1"] < 100  # a real test, not all hits or misses


def test_zero_shot_top_k_equals_clip_benchmark():
    zc = _clip_benchmark_module("zeroshot_classification")
    # its accuracy() calls float() on a 1-element array, which numpy >= 2.? refuses; give that one call .item()
    zc.float = lambda a: builtins.float(a.item() if hasattr(a, "item") else a)
    g = torch.Generator().manual_seed(1)
    img, cls, y = torch.randn(50, 8, generator=g), torch.randn(10, 3, 8, generator=g), torch.randint(0, 10, (50,), generator=g)
    ours = M.zeroshot_classification(img, cls, y, ks=(1, 5))
    emb = M.class_embeddings_from_templates(cls).float()
    logits = torch.nn.functional.normalize(img, dim=-1) @ emb.T
    top1, top5 = zc.accuracy(logits, y, topk=(1, 5))
    assert ours["top1"] / 100 == pytest.approx(top1, abs=1e-6) and ours["top5"] / 100 == pytest.approx(top5, abs=1e-6)


def test_results_table_in_paper_layout_json_markdown_and_plot(tmp_path):
    write_karpathy(tmp_path, "coco")
    write_urban1k(tmp_path)
    write_sugarcrepe(tmp_path)
    found, missing = find_benchmarks(tmp_path)
    assert found == ["coco", "urban1k", "cra", "sugarcrepe"]
    assert sorted(missing) == ["docci", "flickr30k", "imagenet", "sharegpt4v", "xm3600"]
    fake = FakeModel({**KARPATHY_IMG}, {**KARPATHY_TXT, **LONG_TXT, **SC_TXT})
    res = {n: score_benchmark(load_benchmark(n, tmp_path), fake.image_features, fake.text_features) for n in found}
    row = table_row(res)
    assert list(row) == ["COCO I2T", "COCO T2I", "Urban-1k I2T", "Urban-1k T2I", "CRA", "SugarCrepe"]
    assert row["COCO T2I"] == pytest.approx(60.0) and row["CRA"] == pytest.approx(CRA_EXPECTED)
    paths = write_benchmark_report({"ours": res, "clip": res}, tmp_path / "out")
    rep = json.loads(paths["json"].read_text())
    assert rep["table"]["ours"]["Urban-1k T2I"] == pytest.approx(200 / 3)
    assert rep["results"]["clip"]["sugarcrepe"]["files"]["replace_obj"] == 0.0
    md = paths["md"].read_text()
    assert "| model | COCO I2T | COCO T2I | Urban-1k I2T | Urban-1k T2I | CRA | SugarCrepe |" in md
    assert "| ours | 33.33 | 60.00 | 33.33 | 66.67 | 50.00 | 78.57 |" in md
    from PIL import Image

    with Image.open(paths["plot"]) as im:
        assert im.size == (690, 450)  # max(6, 0.9 * 6 columns + 1.5) in x 4.5 in at 100 dpi


@pytest.mark.parametrize("write,bench,message", [
    (None, "coco", "coco/dataset_coco.json: not found: benchmark coco needs dataset_coco.json"),
    (lambda d: (d / "coco").mkdir() or (d / "coco" / "dataset_coco.json").write_text('{"dataset": "coco"}'),
     "coco", "coco/dataset_coco.json: the top level has no 'images' field"),
    (lambda d: (d / "docci").mkdir() or (d / "docci" / "docci_descriptions.jsonlines").write_text('{"split": "test"}\n{'),
     "docci", "docci/docci_descriptions.jsonlines: line 2 is not valid JSON"),
    (lambda d: (d / "sugarcrepe").mkdir() or [(d / "sugarcrepe" / f"{f}.json").write_text("[]") for f in
                                             ("add_obj", "add_att", "replace_obj", "replace_att", "replace_rel",
                                              "swap_obj", "swap_att")],
     "sugarcrepe", "sugarcrepe/add_obj.json: top level is list, expected"),
    (lambda d: (d / "xm3600").mkdir() or (d / "xm3600" / "captions.jsonl").write_text('{"en": {"caption": ["x"]}}\n'),
     "xm3600", "xm3600/captions.jsonl: line 1 has no 'image/key' field"),
    (lambda d: (d / "sharegpt4v").mkdir() or (d / "sharegpt4v" / "share-captioner_coco_lcs_sam_1246k_1107.json")
     .write_text('[{"image": "a.jpg", "conversations": [{"from": "human", "value": "hi"}]}]'),
     "sharegpt4v", "entry 0 (a.jpg): 'conversations' has no turn from 'gpt'"),
    (lambda d: write_imagenet(d) and (d / "imagenet" / "classnames.txt").write_text("dog\n"),
     "imagenet", "imagenet/classnames.txt: lists 1 class names but"),
    (None, "all", "no benchmark files found"),
    (None, "cifar", "unknown benchmark 'cifar': choose from flickr30k, coco"),
])
def test_missing_or_malformed_files_are_one_line_and_exit_2(tmp_path, capsys, write, bench, message):
    from llm2clip_nemo.recipes.evaluate import main

    if write:
        write(tmp_path)
    rc = main(["--model", str(tmp_path / "no_model"), "--benchmark", bench, "--root", str(tmp_path),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    ([], "give --data SPEC (shards or a manifest), or --benchmark NAME --root DIR."),
    (["--benchmark", "coco"], "--benchmark needs --root DIR, the folder holding the benchmark files."),
    (["--benchmark", "coco", "--root", ".", "--data", "x.json"], "--data and --benchmark are alternatives: give one"),
])
def test_evaluate_data_and_benchmark_arguments_are_checked_exit_2(capsys, argv, message):
    from llm2clip_nemo.recipes.evaluate import main

    assert main(["--model", "x", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
