"""Small replicas of the public benchmarks in their published file formats (real field names and
nesting), with synthetic images, and the hand-designed features the tests score them with.

Image k is a flat grey JPEG of level 20 * k + 10; `image_id(path)` reads k back from the pixels, so a
fake image encoder can map each file to a chosen vector. Features live in R^4 (e0..e3).
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import torch
from PIL import Image

E = torch.eye(4, dtype=torch.float64)


def write_image(path: Path, k: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (20 * k + 10,) * 3).save(buf, format="JPEG", quality=95)
    path.write_bytes(buf.getvalue())
    return path


def image_id(path) -> int:
    with Image.open(path) as im:
        v = im.convert("L").getpixel((6, 5))
    return round((v - 10) / 20)


class FakeModel:
    """image_features(paths) -> IMG[image_id], text_features(texts) -> TXT[text]; records calls."""

    def __init__(self, img: dict[int, torch.Tensor], txt: dict[str, torch.Tensor]):
        self.img, self.txt, self.texts_seen = img, txt, []

    def image_features(self, paths):
        return torch.stack([self.img[image_id(p)] for p in paths])

    def text_features(self, texts):
        self.texts_seen += list(texts)
        return torch.stack([self.txt[t] for t in texts])


# ---- Karpathy (COCO, Flickr30k) and CRA: 3 test images, 5 captions ----------------------------------
# images I0=e0, I1=e1, I2=e2; captions c0=e0, c1=e1 (image 0), c2=e2 (image 1), c3=e2+e3, c4=e2+2e3 (image 2)
KARPATHY_TXT = {"a dog runs.": E[0], "a cat sleeps.": E[1], "a red car.": E[2], "a blue boat.": E[2] + E[3],
                "a blue boat on a lake.": E[2] + 2 * E[3], "no image on disk": -E.sum(0)}
KARPATHY_IMG = {0: E[0], 1: E[1], 2: E[2]}
# By hand (pessimistic ties). text->image: c0 rank 0; c1: I1 scores 1 > own I0 (0), I2 ties at 0 -> rank 2;
# c2: I2 scores 1, I0 ties -> rank 2; c3, c4: only I2 > 0 -> rank 0. So t2i R@1 = 3/5, R@5 = 5/5.
# image->text: I0: c0 = 1, nothing >= 1 -> rank 0; I1: own c2 = 0, c0 c1 c3 c4 all >= 0 -> rank 4;
# I2: own best c3 = 0.707, wrong c2 = 1 -> rank 1. So i2t R@1 = 1/3, R@2 = 2/3, R@5 = 3/3.
KARPATHY_EXPECTED = {"i2t_R@1": 100 / 3, "i2t_R@5": 100.0, "i2t_R@10": 100.0, "t2i_R@1": 60.0, "t2i_R@5": 100.0,
                     "t2i_R@10": 100.0}
KARPATHY_CURVE_I2T_R2 = 200 / 3
# CRA by hand: queries c0, c1 (image 0), c3, c4 (image 2); c2 is a distractor. c0: own c1 = 0 ties wrong
# c2 = 0 -> miss; c1 likewise; c3: own c4 = 3/sqrt(10) = 0.949 > wrong c2 = 0.707 -> hit; c4: own c3 0.949 >
# c2 1/sqrt(5) = 0.447 -> hit. CRA = 2/4. (The caption of the image missing on disk, -sum(e), is one more
# distractor, below every query's own best.)
CRA_EXPECTED = 50.0
assert 3 / math.sqrt(10) > 1 / math.sqrt(2)


def write_karpathy(root: Path, dataset: str) -> Path:
    """dataset_coco.json (filepath val2014) or dataset_flickr30k.json (images in flickr30k-images/)."""
    coco = dataset == "coco"
    d = root / ("coco" if coco else "flickr30k")
    img_dir = d / "val2014" if coco else d / "flickr30k-images"

    def entry(i, fn, split, raws):
        e = {"filename": fn, "imgid": i, "split": split, "sentids": list(range(len(raws))),
             "sentences": [{"tokens": (r or "").strip(".").split(), "raw": r, "imgid": i, "sentid": k}
                           for k, r in enumerate(raws)]}
        if coco:
            e.update(filepath="val2014", cocoid=1000 + i)
        return e

    names = [f"COCO_val2014_{i:012d}.jpg" if coco else f"{1000 + i}.jpg" for i in range(6)]
    for k in range(3):
        write_image(img_dir / names[k], k)
    write_image(img_dir / names[3], 3)  # a train image: not in the test split
    write_image(img_dir / names[5], 5)  # a restval image (COCO's extra training split)
    images = [
        # null and blank raws are dropped and counted; the sixth sentence is past the first five
        entry(0, names[0], "test", ["a dog runs.", "a cat sleeps.", None, "", "  ", "never encoded: a sixth"]),
        entry(3, names[3], "train", ["never encoded"]),
        entry(1, names[1], "test", ["a red car."]),
        entry(4, names[4], "test", ["no image on disk"]),  # file missing: skipped, counted
        entry(2, names[2], "test", ["a blue boat.", "a blue boat on a lake."]),
        entry(5, names[5], "restval", ["never encoded either"]),
    ]
    path = d / ("dataset_coco.json" if coco else "dataset_flickr30k.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "dataset": dataset}))
    return path


# ---- one caption per image (Urban-1k, DOCCI, ShareGPT4V, XM3600 'en') ---------------------------------
# images e0, e1, e2; captions: image 0 -> e0, image 1 -> e2 (wrong), image 2 -> e2.
# t2i: cap0 rank 0; cap1 own I1 = 0, I2 = 1, I0 ties -> rank 2; cap2 rank 0 -> R@1 2/3.
# i2t: I0 rank 0; I1 own cap1 = 0, wrong cap0 and cap2 tie at 0 -> rank 2; I2 own cap2 = 1, wrong cap1 = 1
# ties -> rank 1 -> R@1 1/3.
ONE_IMG = {0: E[0], 1: E[1], 2: E[2]}
ONE_EXPECTED = {"i2t_R@1": 100 / 3, "t2i_R@1": 200 / 3, "i2t_R@5": 100.0, "t2i_R@5": 100.0}
LONG = ["A long description of a dog on grass.", "A long description of a cat, misread.",
        "A long description of a red car in a street."]
LONG_TXT = {LONG[0]: E[0], LONG[1]: E[2], LONG[2]: E[2]}


def write_urban1k(root: Path) -> Path:
    d = root / "urban1k"
    for k in range(3):
        write_image(d / "image" / f"{k + 1}.jpg", k)
        (d / "caption").mkdir(parents=True, exist_ok=True)
        (d / "caption" / f"{k + 1}.txt").write_text(LONG[k] + "\nsecond line, never read\n")
    (d / "caption" / "4.txt").write_text("a caption whose image is missing\n")
    # bad images are skipped and counted by the one decoder's reasons
    (d / "caption" / "5.txt").write_text("a caption whose image is not an image\n")
    (d / "image" / "5.jpg").write_bytes(b"<html>not found</html>")
    (d / "caption" / "6.txt").write_text("a caption whose image ends early\n")
    data = write_image(d / "image" / "6.jpg", 5).read_bytes()
    (d / "image" / "6.jpg").write_bytes(data[: len(data) // 2])
    return d


def write_docci(root: Path) -> Path:
    d = root / "docci"
    rows = [{"example_id": "train_00001", "split": "train", "image_file": "train_00001.jpg", "description": "x"},
            {"example_id": "qual_dev_00001", "split": "qual_dev", "image_file": "qual_dev_00001.jpg",
             "description": "y"}]
    for k in range(3):
        write_image(d / "images" / f"test_{k:05d}.jpg", k)
        rows.append({"example_id": f"test_{k:05d}", "split": "test", "image_file": f"test_{k:05d}.jpg",
                     "description": LONG[k]})
    d.mkdir(parents=True, exist_ok=True)
    (d / "docci_descriptions.jsonlines").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def write_sharegpt4v(root: Path) -> Path:
    """1,001 entries: 3 scored, 997 whose images are absent (counted), and the 1,001st (never read)."""
    d = root / "sharegpt4v"

    def entry(i, image, caption):
        return {"id": str(i), "image": image,
                "conversations": [{"from": "human", "value": "<image>\nWhat do you see happening in this image?"},
                                  {"from": "gpt", "value": caption}]}

    rows = []
    for k in range(3):
        write_image(d / "coco" / "train2017" / f"{k:012d}.jpg", k)
        # the caption's newline becomes a space, as the reference loaders do
        cap = LONG[k].replace(" of a ", " of a\n", 1)
        rows.append(entry(k, f"coco/train2017/{k:012d}.jpg", cap))
    rows += [entry(i, f"sam/images/sa_{i}.jpg", f"caption {i}") for i in range(3, 1000)]
    write_image(d / "llava" / "images" / "late.jpg", 4)
    rows.append(entry(1000, "llava/images/late.jpg", "the 1,001st entry, past the first 1,000"))
    (d / "share-captioner_coco_lcs_sam_1246k_1107.json").write_text(json.dumps(rows))
    return d


# ---- XM3600: 'en' one caption per image (the design above), 'de' two per image, all right -----------
XM_DE = {f"Bild {k} Beschreibung {j}": E[k] + 0.1 * j * E[3] for k in range(3) for j in range(2)}
XM_EXPECTED = {"en": {"i2t_R@1": 100 / 3, "t2i_R@1": 200 / 3}, "de": {"i2t_R@1": 100.0, "t2i_R@1": 100.0}}


def write_xm3600(root: Path) -> Path:
    d = root / "xm3600"
    lines = []
    for k in range(3):
        key = f"{k:016x}"
        write_image(d / "images" / f"{key}.jpg", k)
        de = [f"Bild {k} Beschreibung {j}" for j in range(2)]
        lines.append({"image/key": key, "image/locale": ("de", "en", "fr")[k],
                      "en": {"caption": [LONG[k]], "caption/tokenized": [LONG[k].lower()],
                             "caption/tokenized/lowercase": [LONG[k].lower()]},
                      "de": {"caption": de, "caption/tokenized": de, "caption/tokenized/lowercase": de}})
    (d / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return d


# ---- SugarCrepe: image 0 = e0, image 1 = e1 -----------------------------------------------------------
SC_TXT = {"pos e0": E[0], "neg e1": E[1], "pos tie": E[2], "neg tie": E[2]}
SC_IMG = {0: E[0], 1: E[1]}
# add_obj: (image 0: e0 vs e1 -> hit), (image 1: e0 vs e1 -> miss) = 50; replace_obj: a tie -> miss = 0;
# the five others one hit each = 100. Mean 550 / 7.
SC_EXPECTED = {"add_obj": 50.0, "add_att": 100.0, "replace_obj": 0.0, "replace_att": 100.0, "replace_rel": 100.0,
               "swap_obj": 100.0, "swap_att": 100.0}


def write_sugarcrepe(root: Path) -> Path:
    d = root / "sugarcrepe"
    for k in range(2):
        write_image(d / "val2017" / f"{k:012d}.jpg", k)
    hit = {"filename": f"{0:012d}.jpg", "caption": "pos e0", "negative_caption": "neg e1"}
    files = {f: {"0": hit} for f in SC_EXPECTED}
    files["add_obj"] = {"0": hit, "1": {"filename": f"{1:012d}.jpg", "caption": "pos e0", "negative_caption": "neg e1"}}
    files["replace_obj"] = {"0": {"filename": f"{0:012d}.jpg", "caption": "pos tie", "negative_caption": "neg tie"}}
    for f, obj in files.items():
        (d / f"{f}.json").write_text(json.dumps(obj, indent=4))
    return d


# ---- ImageNet-style zero-shot: classes cat (e0) and dog (e1) -------------------------------------------
# val/n02123045 (cat): images e0 (right), e1 (says dog: wrong); val/n02085620 (dog) sorts first: image e1.
# Sorted folders: n02085620 -> "dog" (class 0), n02123045 -> "cat" (class 1). top-1 = 2/3.
def imagenet_txt(templates) -> dict:
    return {t.format(c): v for c, v in (("cat", E[0]), ("dog", E[1])) for t in templates}


IN_IMG = {0: E[0], 1: E[1]}
IN_EXPECTED_TOP1 = 200 / 3


def write_imagenet(root: Path) -> Path:
    d = root / "imagenet"
    write_image(d / "val" / "n02085620" / "ILSVRC2012_val_00000003.JPEG", 1)
    write_image(d / "val" / "n02123045" / "ILSVRC2012_val_00000001.JPEG", 0)
    write_image(d / "val" / "n02123045" / "ILSVRC2012_val_00000002.JPEG", 1)
    (d / "classnames.txt").write_text("dog\ncat\n")
    return d
