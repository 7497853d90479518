"""`evaluate --benchmark`: a stock HF CLIPModel (its own text tower) and our exported LLM2CLIP in one
table, each number equal to the metric computed straight from that model's own encoders."""
from __future__ import annotations

import json

import pytest
import torch
from bench_fixtures import write_imagenet, write_karpathy, write_sugarcrepe, write_urban1k, write_xm3600
from test_hf_export import tiny_run

from llm2clip_nemo import metrics as M
from llm2clip_nemo.eval.bench_run import pair_accuracy
from llm2clip_nemo.eval.benchmarks import load_benchmark
from llm2clip_nemo.eval.templates import IMAGENET_TEMPLATES


def write_tiny_clip(d):
    """A random 2-layer CLIPModel (16 px images, 16-d projection) with a letter-level CLIP tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,'")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=77,
                                      bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], **small),
                     vision_config=dict(image_size=16, patch_size=8, **small), projection_dim=16)
    CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 16, "width": 16}, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3],
        "image_processor_type": "CLIPImageProcessor"}))
    return d


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    root = tmp_path_factory.mktemp("bench_root")
    for w in (write_urban1k, write_xm3600, write_sugarcrepe, write_imagenet):
        w(root)
    write_karpathy(root, "coco")
    return {"root": root, "clip": write_tiny_clip(tmp_path_factory.mktemp("tiny_clip")),
            "tiny": tiny_run(base / "llm2clip_tiny_run")}


def reference(img_fn, txt_fn, root) -> dict:
    """Table values computed from the encoders directly, by the protocols' definitions."""
    out = {}
    for name, label in (("coco", "COCO"), ("urban1k", "Urban-1k")):
        b = load_benchmark(name, root)
        g = b.groups[""]
        r = M.retrieval_metrics(img_fn(b.images), txt_fn(g.captions), g.image_index)
        out[f"{label} I2T"], out[f"{label} T2I"] = r["i2t_R@1"], r["t2i_R@1"]
    b = load_benchmark("xm3600", root)
    langs = [M.retrieval_metrics(img_fn(b.images), txt_fn(g.captions), g.image_index) for g in b.groups.values()]
    out["XM3600 I2T"] = sum(r["i2t_R@1"] for r in langs) / len(langs)
    out["XM3600 T2I"] = sum(r["t2i_R@1"] for r in langs) / len(langs)
    b = load_benchmark("imagenet", root)
    per = txt_fn([t.format(c) for c in b.classnames for t in IMAGENET_TEMPLATES]).reshape(2, 80, -1)
    out["ImageNet top-1"] = M.zeroshot_classification(img_fn(b.images), per, b.labels, ks=(1,))["top1"]
    b = load_benchmark("cra", root)
    out["CRA"] = M.caption_retrieval_accuracy(txt_fn(b.groups[""].captions), b.groups[""].image_index)
    b = load_benchmark("sugarcrepe", root)
    img = img_fn(b.images)
    accs = [pair_accuracy(img[g.image_index], txt_fn(g.captions), txt_fn(g.negatives)) for g in b.groups.values()]
    out["SugarCrepe"] = sum(accs) / len(accs)
    return out


def test_stock_clip_baseline_and_llm2clip_export_in_one_table(setup, tmp_path, capsys):
    from transformers import AutoTokenizer, CLIPModel

    from llm2clip_nemo import LLM2CLIP
    from llm2clip_nemo.hf_model import preprocess_images
    from llm2clip_nemo.recipes.evaluate import main

    out = tmp_path / "report"
    rc = main(["--model", str(setup["tiny"]["export"]), "--name", "llm2clip", "--baseline", str(setup["clip"]),
               "--benchmark", "all", "--root", str(setup["root"]), "--out", str(out), "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert rc == 0
    for missing in ("flickr30k", "sharegpt4v", "docci"):
        assert f"missing: {missing} (no " in printed
    table = json.loads((out / "report.json").read_text())["table"]
    assert list(table) == ["llm2clip", setup["clip"].name]
    assert list(table["llm2clip"]) == ["COCO I2T", "COCO T2I", "Urban-1k I2T", "Urban-1k T2I", "XM3600 I2T",
                                       "XM3600 T2I", "ImageNet top-1", "CRA", "SugarCrepe"]
    assert (out / "benchmarks.png").is_file() and "| llm2clip |" in (out / "report.md").read_text()

    clip = CLIPModel.from_pretrained(setup["clip"]).eval()
    tok = AutoTokenizer.from_pretrained(setup["clip"])

    @torch.no_grad()
    def clip_img(paths):
        out = clip.get_image_features(pixel_values=preprocess_images(paths, 16, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]))
        return out.pooler_output  # transformers 5: the projected features

    @torch.no_grad()
    def clip_txt(texts):
        enc = tok(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        return clip.get_text_features(**enc).pooler_output

    ours = LLM2CLIP.from_pretrained(setup["tiny"]["export"])
    for model, (img_fn, txt_fn) in ((setup["clip"].name, (clip_img, clip_txt)),
                                    ("llm2clip", (ours.get_image_features, ours.get_text_features))):
        ref = reference(img_fn, txt_fn, setup["root"])
        for col, v in ref.items():
            assert table[model][col] == pytest.approx(v, abs=1e-4), (model, col)


def test_stock_clip_truncates_captions_to_its_77_token_context(setup):
    from llm2clip_nemo.models.stock_clip import StockCLIP, is_stock_clip

    assert is_stock_clip(setup["clip"]) and not is_stock_clip(setup["tiny"]["export"])
    m = StockCLIP.from_pretrained(setup["clip"])
    assert (m.image_size, m.mean, m.max_tokens) == (16, [0.5, 0.4, 0.3], 77)
    long, cut = m.get_text_features(["a " * 200, "a " * 75])  # 'a' a token: 75 + BOS + EOS = 77
    assert torch.allclose(long, cut, atol=1e-6)
    assert not torch.allclose(cut, m.get_text_features(["a " * 74])[0], atol=1e-3)


@pytest.mark.parametrize("layout", ["run", "nemo"])
def test_training_run_and_nemo_score_as_their_export(setup, tmp_path, layout):
    from llm2clip_nemo.recipes.evaluate import main

    tables = {}
    for which in (layout, "export"):
        out = tmp_path / which
        argv = ["--model", str(setup["tiny"][which]), "--benchmark", "urban1k,cra", "--root", str(setup["root"]),
                "--out", str(out), "--name", "m", "--no-plots"]
        assert main(argv) == 0
        tables[which] = json.loads((out / "report.json").read_text())["table"]["m"]
        assert not (out / "benchmarks.png").exists()
    assert list(tables[layout]) == ["Urban-1k I2T", "Urban-1k T2I", "CRA"]
    for col, v in tables["export"].items():
        assert tables[layout][col] == pytest.approx(v, abs=1e-4), col


def test_stock_clip_through_evaluate_data_equals_its_own_encoders(setup, tmp_path):
    from llm2clip_nemo.hf_model import preprocess_images
    from llm2clip_nemo.models.stock_clip import StockCLIP
    from llm2clip_nemo.recipes.evaluate import main

    b = load_benchmark("urban1k", setup["root"])
    caps = b.groups[""].captions
    manifest = tmp_path / "urban.json"
    manifest.write_text(json.dumps([{"image": p, "caption": c} for p, c in zip(b.images, caps)]))
    out = tmp_path / "out"
    assert main(["--model", str(setup["clip"]), "--data", str(manifest), "--out", str(out), "--name", "clip",
                 "--no-plots"]) == 0
    got = json.loads((out / "report.json").read_text())["results"]["clip"]["retrieval"]
    m = StockCLIP.from_pretrained(setup["clip"])
    ref = M.retrieval_metrics(m.get_image_features(preprocess_images(b.images, 16, m.mean, m.std)),
                              m.get_text_features(caps), list(range(len(caps))))
    for k in ("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5"):
        assert got[k] == pytest.approx(ref[k], abs=1e-9), k
