"""Eval manifests on real files: three formats, split filter, missing and corrupt images."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from llm2clip_nemo import metrics
from llm2clip_nemo.eval.manifest import (
    ManifestError,
    detect_format,
    from_samples,
    load_manifest,
)


def _png(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "imgs"
    for i, c in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        _png(root / f"im{i}.png", c)
    (root / "broken.png").write_bytes(b"not an image at all")
    return root


def test_simple_format_with_missing_and_unreadable(tmp_path, images):
    man = [
        {"image": "im0.png", "captions": ["red", "a red square"]},
        {"image": "gone.png", "captions": ["lost"]},
        {"image": "im1.png", "caption": "green"},
        {"image": "broken.png", "captions": ["corrupt"]},
        {"image": str(images / "im2.png"), "captions": ["blue", "b", "c"], "label": "blue"},
    ]
    p = tmp_path / "m.json"
    p.write_text(json.dumps(man))
    es = load_manifest(p, image_root=images)
    assert es.keys == ["im0.png", "im1.png", str(images / "im2.png")]
    assert es.captions == ["red", "a red square", "green", "blue", "b", "c"]
    assert es.text_to_image == [0, 0, 1, 2, 2, 2]
    assert es.labels == [None, None, "blue"]
    # problems name the manifest entry, by the stream's reason names (was: bare paths, missing/unreadable)
    assert es.missing == ["entry 1 (gone.png)"] and es.unreadable == ["entry 3 (broken.png)"]
    assert es.skipped == {"missing_image": ["entry 1 (gone.png)"], "corrupt_image": ["entry 3 (broken.png)"]}
    assert es.n_skipped == 2
    assert es.summary().endswith("3 images, 6 captions; skipped 2 samples (corrupt_image: 1, missing_image: 1; "
                                 "first: entry 1 (gone.png))")
    assert es.load_image(1).getpixel((0, 0)) == (0, 255, 0)
    with pytest.raises(ManifestError, match=r"m\.json: entry 1 \(gone\.png\): missing_image \(.*gone\.png does not "
                                            r"exist\); fix the entry or image_root \(now .*imgs\), or run without strict"):
        load_manifest(p, image_root=images, strict=True)


def test_jsonl_and_default_root_is_manifest_folder(tmp_path, images):
    p = images / "m.jsonl"
    p.write_text('{"image": "im0.png", "caption": "x", "split": "test"}\n\n'
                 '{"image": "im1.png", "caption": "y", "split": "train"}\n')
    es = load_manifest(p, split="test")
    assert es.keys == ["im0.png"] and es.captions == ["x"] and es.n_skipped == 0


def test_karpathy_format_split_filter(tmp_path, images):
    _png(tmp_path / "val2014" / "a.png", (1, 2, 3))
    kp = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "a.png", "split": "test",
         "sentences": [{"raw": "one"}, {"raw": "two"}, {"tokens": ["three", "words", "here"]}]},
        {"filepath": "val2014", "filename": "missing.png", "split": "test", "sentences": [{"raw": "x"}]},
        {"filepath": "val2014", "filename": "a.png", "split": "train", "sentences": [{"raw": "train"}]},
    ]}
    p = tmp_path / "dataset_coco.json"
    p.write_text(json.dumps(kp))
    es = load_manifest(p, split="test")
    assert es.keys == ["val2014/a.png"] and es.captions == ["one", "two", "three words here"]
    assert es.text_to_image == [0, 0, 0] and len(es.missing) == 1
    assert load_manifest(p, split=["test", "train"]).n_captions == 4
    with pytest.raises(ManifestError, match=r"has no entries for split=\['val'\]"):
        load_manifest(p, split="val")


def test_coco_captions_format(tmp_path, images):
    coco = {"images": [{"id": 7, "file_name": "im2.png"}, {"id": 3, "file_name": "im0.png"}],
            "annotations": [{"id": 1, "image_id": 3, "caption": "red "}, {"id": 2, "image_id": 7, "caption": "blue"},
                            {"id": 3, "image_id": 3, "caption": "scarlet"}]}
    p = tmp_path / "captions_val.json"
    p.write_text(json.dumps(coco))
    es = load_manifest(p, image_root=images)
    assert es.keys == ["im2.png", "im0.png"]
    assert es.captions == ["blue", "red", "scarlet"] and es.text_to_image == [0, 1, 1]
    with pytest.raises(ManifestError, match="COCO captions file, which holds one split"):
        load_manifest(p, image_root=images, split="val")
    coco["annotations"].append({"id": 9, "image_id": 99, "caption": "x"})
    p.write_text(json.dumps(coco))
    with pytest.raises(ManifestError, match="annotation 9 refers to image_id 99"):
        load_manifest(p, image_root=images)


def test_format_errors(tmp_path):
    assert detect_format([]) == "simple"
    with pytest.raises(ManifestError, match=r"unrecognised manifest layout \(top level: \['foo'\]\)"):
        detect_format({"foo": 1})
    p = tmp_path / "bad.json"
    p.write_text("[{\"image\": 1,}")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        load_manifest(p)
    p.write_text(json.dumps([{"image": "a.png"}]))
    with pytest.raises(ManifestError, match=r"entry 0 \(a\.png\) has neither 'captions', 'caption' nor 'label'"):
        load_manifest(p)
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope.json")


def test_from_samples_and_captioned_subset():
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    samples = [
        {"__key__": "a", "image": red, "captions": ["red", "crimson"]},
        {"__key__": "b", "image": None, "txt": "nothing"},
        {"__key__": "c", "image": np.zeros((4, 4, 3), np.uint8), "txt": "black"},
        {"__key__": "d", "image": torch.zeros(3, 4, 4), "label": "dark"},
    ]
    es = from_samples(samples)
    assert es.keys == ["a", "c", "d"] and es.missing == ["b"]
    assert es.captions == ["red", "crimson", "black"] and es.text_to_image == [0, 0, 1]
    assert es.labels == [None, None, "dark"]
    sub = es.captioned()
    assert sub.keys == ["a", "c"] and sub.text_to_image == [0, 0, 1]
    # the structure feeds the metrics directly
    feats = torch.eye(3)
    r = metrics.retrieval_metrics(feats[:2], feats[[0, 0, 1]], sub.text_to_image, ks=(1,))
    assert r["i2t_R@1"] == 100.0 and r["t2i_R@1"] == 100.0


def test_webdataset_style_samples_and_labels():
    img = Image.new("RGB", (4, 4), (9, 9, 9))
    samples = [
        {"__key__": "000", "png": img, "txt": "short", "json": {"long": "a long recaption"}, "label": "grey"},
        {"__key__": "001", "jpg": img, "txt": "other", "json": {"long": "more"}, "label": "dark"},
        {"__key__": "002", "txt": "no image", "label": "grey"},
    ]
    es = from_samples(samples, captions_fn=lambda s: [s["txt"], s["json"]["long"]])
    assert es.keys == ["000", "001"] and es.missing == ["002"]
    assert es.captions == ["short", "a long recaption", "other", "more"]
    assert es.label_indices() == (["dark", "grey"], [1, 0])
    assert es.label_indices(["grey", "dark", "white"]) == (["grey", "dark", "white"], [0, 1])
    with pytest.raises(ManifestError, match=r"labels \['grey'\] are not among the 1 class names"):
        es.label_indices(["dark"])
    with pytest.raises(ManifestError, match="1 of 2 images have no 'label'"):
        from_samples([samples[0], {"png": img, "txt": "x"}]).label_indices()


def test_null_blank_and_non_string_captions_are_dropped_and_named_by_entry(tmp_path, images):
    """Issue 14.8: null became the caption "None"; blank ones failed naming internal list positions."""
    man = [{"image": "im0.png", "captions": ["red", None]},
           {"image": "im1.png", "captions": ["  ", None]},
           {"image": "im2.png", "caption": 5},
           {"image": "im2.png", "captions": [" blue "], "key": "again"}]
    p = tmp_path / "m.json"
    p.write_text(json.dumps(man))
    es = load_manifest(p, image_root=images)
    assert es.keys == ["im0.png", "again"] and es.captions == ["red", "blue"] and "None" not in es.captions
    assert es.skipped == {"missing_caption": ["entry 1 (im1.png)", "entry 2 (im2.png)"]}
    assert es.dropped == {"bad_caption": ["entry 0 (im0.png)", "entry 1 (im1.png)", "entry 2 (im2.png)"]}
    assert es.reason_counts() == {"bad_caption": 3, "missing_caption": 2}
    with pytest.raises(ManifestError, match=r"m\.json: entry 0 \(im0\.png\): bad_caption \(1 caption\(s\) null, "
                                            r"blank or not a string\); fix the entry"):
        load_manifest(p, image_root=images, strict=True)


def test_bomb_and_truncated_images_are_counted_at_load_not_mid_run(tmp_path, images):
    """Issue 14.3: a bomb header crashed before the model loaded; a truncated JPEG passed the header
    check and crashed mid-run. Both are decoded at load and counted by the stream's reason names."""
    from fault_images import bomb_png, truncated_jpeg

    (images / "bomb.png").write_bytes(bomb_png())
    (images / "cut.jpg").write_bytes(truncated_jpeg())
    p = tmp_path / "m.json"
    p.write_text(json.dumps([{"image": n, "caption": "x"} for n in ("im0.png", "bomb.png", "cut.jpg")]))
    es = load_manifest(p, image_root=images)
    assert es.keys == ["im0.png"]
    assert es.skipped == {"image_too_large": ["entry 1 (bomb.png)"], "truncated_image": ["entry 2 (cut.jpg)"]}
    with pytest.raises(ManifestError, match=r"entry 1 \(bomb\.png\): image_too_large \(.*10000000000 pixels"):
        load_manifest(p, image_root=images, strict=True)
