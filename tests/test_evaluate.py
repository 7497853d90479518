"""`llm2clip-nemo evaluate`: numbers vs a reference computed by hand from the model, the exported
model equal to the pre-export one, data-parallel equal to one process, bad input messages."""
from __future__ import annotations

import json

import pytest
from dist_utils import run_workers
from PIL import Image
from test_hf_export import CLASSES, image_bytes, tiny_run, word_samples

from llm2clip_nemo import metrics as M

TASK_KEYS = ("retrieval", "recall_curve", "long_retrieval", "long_recall_curve", "cra", "zeroshot")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_run(tmp_path_factory.getbasetemp() / "llm2clip_tiny_run")


def reference_numbers(model, samples) -> dict:
    """The metrics straight from the model's encoders on the samples we wrote (no eval pipeline)."""
    from llm2clip_nemo.hf_model import preprocess_images

    t = model.typed.train_ds.transform
    img = model.encode_images(preprocess_images([s.image for s in samples], 16, t.mean, t.std))

    def text(caps):
        return model.encode_teacher_embeddings(model.teacher.encode_texts(caps))

    caps, t2i = [], []
    for i, s in enumerate(samples):
        for c in [s.txt, *s.meta["short_list"]]:
            caps.append(c)
            t2i.append(i)
    longs = [s.meta["long"] for s in samples]
    cls = M.build_class_embeddings(sorted(CLASSES), ["a photo of a {}."], text)
    labels = [sorted(CLASSES).index(s.meta["group"]) for s in samples]
    raw = model.teacher.encode_texts(caps + longs)
    return {
        "retrieval": M.retrieval_metrics(img, text(caps), t2i),
        "long_retrieval": M.retrieval_metrics(img, text(longs), list(range(len(samples)))),
        "cra_adapter": M.caption_retrieval_accuracy(text(caps + longs), t2i + list(range(len(samples)))),
        "cra_llm": M.caption_retrieval_accuracy(raw, t2i + list(range(len(samples)))),
        "all_pairs_adapter": M.caption_retrieval_all_pairs(text(caps + longs), t2i + list(range(len(samples)))),
        "all_pairs_llm": M.caption_retrieval_all_pairs(raw, t2i + list(range(len(samples)))),
        "zeroshot": M.zeroshot_classification(img, cls, labels, ks=(1, 2)),
    }


def test_cli_numbers_match_reference_and_report_is_written(tiny, tmp_path, capsys):
    from llm2clip_nemo.models.loading import load_llm2clip
    from llm2clip_nemo.recipes.evaluate import main

    out = tmp_path / "report"
    rc = main(["--model", str(tiny["run"]), "--data", str(tiny["test"]), "--caption-field", "txt,short_list",
               "--labels-field", "group", "--templates", "a photo of a {}.", "--out", str(out), "--batch-size", "5",
               "--name", "tiny"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| model | i2t_R@1 | i2t_R@5 | i2t_R@10 | t2i_R@1" in printed and "| tiny |" in printed
    rep = json.loads((out / "report.json").read_text())
    r = rep["results"]["tiny"]
    assert r["tasks"] == ["retrieval", "long", "cra", "zeroshot"]
    assert (r["n_images"], r["n_captions"]) == (12, 36)
    ref = reference_numbers(load_llm2clip(tiny["run"]), word_samples(12, 2))
    for k in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@10", "mean_recall"):
        assert r["retrieval"][k] == pytest.approx(ref["retrieval"][k], abs=1e-9)
        assert r["long_retrieval"][k] == pytest.approx(ref["long_retrieval"][k], abs=1e-9)
    assert r["cra"]["adapter"] == pytest.approx(ref["cra_adapter"], abs=1e-9)
    assert r["cra"]["llm"] == pytest.approx(ref["cra_llm"], abs=1e-9)
    assert r["cra_all_pairs"]["adapter"] == pytest.approx(ref["all_pairs_adapter"], abs=1e-9)
    assert r["cra_all_pairs"]["llm"] == pytest.approx(ref["all_pairs_llm"], abs=1e-9)
    assert (r["cra"]["n_images"], r["cra_all_pairs"]["n_captions"]) == (12, 48)
    assert r["zeroshot"]["top1"] == pytest.approx(ref["zeroshot"]["top1"], abs=1e-9)
    assert r["zeroshot"]["n_classes"] == 3 and r["recall_curve"]["i2t"][-1] == r["retrieval"]["i2t_R@10"]
    md = (out / "report.md").read_text()
    for section in ("## retrieval (txt, short_list captions, R@k %)", "## long-caption retrieval", "## caption "
                    "retrieval accuracy", "## zero-shot classification", "![recall@k: retrieval]"):
        assert section in md
    # plot sizes are fixed by construction: 10x4 in at 100 dpi; grids (1 + k) x queries cells of 160 px
    assert Image.open(out / "retrieval_recall_at_k.png").size == (1000, 400)
    assert Image.open(out / "tiny_t2i_grid.png").size == (960, 640)
    assert Image.open(out / "tiny_i2t_grid.png").size == (960, 640)


def test_exported_model_scores_equal_pre_export_and_compare_report(tiny, tmp_path):
    from llm2clip_nemo import LLM2CLIP
    from llm2clip_nemo.eval import evaluate, load_eval_data, write_comparison_report
    from llm2clip_nemo.models.loading import load_llm2clip

    data = load_eval_data(str(tiny["test"]), ["txt", "short_list"], labels_field="group")
    before = evaluate(load_llm2clip(tiny["ckpt"]), data, name="before", plots=False)
    after_hf = evaluate(LLM2CLIP.from_pretrained(tiny["export"]), data, name="export (transformers)")
    after_mg = evaluate(tiny["export"], data, name="export (megatron)")
    for k in TASK_KEYS:
        assert after_hf[k] == before[k], k
        assert after_mg[k] == before[k], k
    paths = write_comparison_report({"before": before, "after": after_hf}, tmp_path / "cmp", title="before vs after")
    md = paths["md"].read_text()
    assert md.startswith("# before vs after") and "| before |" in md and "| after |" in md
    assert set(json.loads(paths["json"].read_text())["results"]) == {"before", "after"}
    assert (tmp_path / "cmp" / "long_retrieval_recall_at_k.png").is_file()


def _dp_worker(rank, world, export, data_spec):
    from megatron.core import parallel_state as ps

    from llm2clip_nemo import LLM2CLIP
    from llm2clip_nemo.eval import evaluate
    from llm2clip_nemo.runtime import init_parallel

    init_parallel(1)
    kw = dict(caption_fields=("txt", "short_list"), labels_field="group", batch_size=4, plots=False)
    dp = evaluate(LLM2CLIP.from_pretrained(export), data_spec, name="dp", **kw)
    # the same ranks as one tensor-parallel teacher group: both encode every caption (DP size 1)
    ps.destroy_model_parallel()
    tp = evaluate(LLM2CLIP.from_pretrained(export, tensor_parallel=2), data_spec, name="tp", **kw)
    return {k: dp[k] for k in TASK_KEYS}, {k: tp[k] for k in TASK_KEYS}


def test_data_parallel_and_tensor_parallel_evaluation_equal_one_process(tiny):
    from llm2clip_nemo import LLM2CLIP
    from llm2clip_nemo.eval import evaluate

    single = evaluate(LLM2CLIP.from_pretrained(tiny["export"]), str(tiny["test"]), caption_fields=("txt", "short_list"),
                      labels_field="group", batch_size=64, name="one")
    (dp0, tp0), (dp1, tp1) = run_workers(_dp_worker, 2, str(tiny["export"]), str(tiny["test"]))
    assert dp0 == dp1 and tp0 == tp1
    for k in TASK_KEYS:
        assert dp0[k] == single[k], k
        assert tp0[k] == single[k], k


# ---- bad input ------------------------------------------------------------------------------------

def _manifest(tmp_path, n_present=3):
    entries = []
    for i in range(n_present):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(image_bytes(i))
        entries.append({"image": p.name, "captions": [f"w{i} w{i + 1}", f"w{i + 2}"], "label": CLASSES[i % 3]})
    entries.append({"image": "missing.png", "captions": ["w70 w71"], "label": CLASSES[0]})
    man = tmp_path / "eval.json"
    man.write_text(json.dumps(entries))
    return man


def test_manifest_missing_images_are_skipped_and_counted_or_refused_with_strict(tiny, tmp_path, capsys):
    from llm2clip_nemo.recipes.evaluate import main

    man = _manifest(tmp_path)
    out = tmp_path / "rep"
    assert main(["--model", str(tiny["export"]), "--data", str(man), "--out", str(out), "--no-plots"]) == 0
    r = next(iter(json.loads((out / "report.json").read_text())["results"].values()))
    assert r["n_images"] == 3 and r["n_captions"] == 6 and r["skipped"] == 1
    assert r["skipped_by_reason"] == {"missing_image": 1}
    assert r["data_summary"].endswith("skipped 1 samples (missing_image: 1; first: entry 3 (missing.png))")
    assert r["tasks"] == ["retrieval", "cra", "zeroshot"]
    capsys.readouterr()
    assert main(["--model", str(tiny["export"]), "--data", str(man), "--out", str(out), "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("llm2clip-nemo evaluate: error: ")
    assert "eval.json: entry 3 (missing.png): missing_image (" in err and "run without strict" in err


def test_tasks_the_data_cannot_support_and_bad_models_are_clear_errors(tiny, tmp_path, capsys):
    from llm2clip_nemo.recipes.evaluate import main

    base = ["--data", str(tiny["test"]), "--out", str(tmp_path / "r")]
    assert main(["--model", str(tiny["export"]), *base, "--tasks", "zeroshot"]) == 2
    assert "task 'zeroshot' needs data the eval set lacks: no labels (--labels-field)" in capsys.readouterr().err
    assert main(["--model", str(tiny["export"]), *base, "--tasks", "retrieval,bleu"]) == 2
    assert "unknown task(s) ['bleu']" in capsys.readouterr().err
    assert main(["--model", str(tiny["export"]), *base, "--labels-field", "colour"]) == 2
    assert "--labels-field 'colour': no sample json of" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--model", str(tmp_path / "empty"), *base]) == 2
    err = capsys.readouterr().err
    assert "unknown checkpoint layout:" in err and "is a directory holding nothing" in err



def test_shard_captions_are_distinct_per_image_and_unlabelled_samples_skip_zeroshot(tiny, tmp_path):
    from llm2clip_nemo import LLM2CLIP
    from llm2clip_nemo.data.shards import ShardSample, write_shards
    from llm2clip_nemo.eval import cra_groups, evaluate, load_eval_data

    samples = [ShardSample(f"k{i}", image_bytes(50 + i), "png", f"w{i} w{i + 1}",
                           {"short_list": [f"w{i} w{i + 1}", f"w{i + 20}"], "long": f"w{i + 20}",
                            **({"group": CLASSES[i % 2]} if i < 4 else {})}) for i in range(6)]
    write_shards(samples, str(tmp_path / "s"), samples_per_shard=3)
    data = load_eval_data(str(tmp_path / "s"), ["txt", "short_list"], labels_field="group")
    # short_list repeats txt: each image keeps 2 distinct captions, in field order
    assert data.set.captions[:2] == ["w0 w1", "w20"] and data.set.n_captions == 12
    caps, ids = cra_groups(data)  # the long caption equals a short one: not counted twice
    assert len(caps) == 12 and ids[:2] == [0, 0]
    assert data.set.labels[4:] == [None, None]
    r = evaluate(LLM2CLIP.from_pretrained(tiny["export"]), data, tasks="zeroshot,cra")
    assert r["zeroshot"]["n_images"] == 4 and r["zeroshot"]["n_classes"] == 2
    assert r["cra"]["n_images"] == 6 and r["cra_all_pairs"]["n_captions"] == 12


def test_shards_with_a_corrupt_image_are_skipped_and_counted_or_refused_with_strict(tmp_path):
    from llm2clip_nemo.data.shards import ShardSample, write_shards
    from llm2clip_nemo.eval import EvalDataError, load_eval_data

    samples = [ShardSample(f"k{i}", image_bytes(i) if i != 1 else b"\x89PNG not really", "png", f"w{i}")
               for i in range(3)]
    write_shards(samples, str(tmp_path / "s"), samples_per_shard=3)
    data = load_eval_data(str(tmp_path / "s"))
    assert data.set.keys == ["k0", "k2"] and data.set.captions == ["w0", "w2"]
    assert data.set.skipped == {"corrupt_image": [f"{tmp_path / 's' / 'shard-000000.tar'}:k1"]}
    assert "skipped 1 samples (corrupt_image: 1; first: " in data.summary()
    with pytest.raises(EvalDataError, match=r"shard-000000\.tar: sample k1: corrupt_image \(.*\); fix the shard or "
                                            r"run without --strict"):
        load_eval_data(str(tmp_path / "s"), strict=True)


def test_package_import_stays_light_and_exports_llm2clip():
    import subprocess
    import sys

    code = ("import sys, llm2clip_nemo; assert 'torch' not in sys.modules, 'torch imported'; "
            "from llm2clip_nemo import LLM2CLIP; print(LLM2CLIP.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "llm2clip_nemo.hf_model"
