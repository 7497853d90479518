"""Decode + preprocess of 512-px JPEGs to 224-px float batches: ours vs open_clip's own eval transform.

Images: matplotlib's grace_hopper.jpg photo (512 x 600), re-encoded as `--images` variants (flips,
shifts, brightness), each with a 512-px short side at JPEG quality 90. Every pipeline turns the same
encoded bytes into the same [batch, 3, 224, 224] float32 batch normalised with the OpenAI CLIP mean/std:
- open_clip: `PIL.Image.open` + `open_clip.transform.image_transform(224, is_train=False)` (torchvision
  Resize(224, bicubic) -> CenterCrop -> RGB -> ToTensor -> Normalize), per image, then `torch.stack`;
  exactly what open_clip's CsvDataset does per sample.
- ours (draft): `data.transforms.ImageTransform(train=False)` (the one decoder, libjpeg decodes at 1/2
  scale since 256 px still covers 224) + `normalize_batch`, the eval and training stream path.
- ours (full decode): the same with `jpeg_draft=False`.
One process, one thread; the pipelines alternate batch by batch (on a shared CPU all see the same
load) and each batch is timed by this process's CPU time; rates are medians over batches.

    .bench-venv/bin/python benchmarks/decode_throughput.py [--images 256] [--batch 32] [--rounds 8]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from llm2clip_nemo.data.transforms import (  # noqa: E402
    OPENAI_CLIP_STD,
    ImageTransform,
    TransformConfig,
    normalize_batch,
    to_uint8_batch,
)


def photo_jpegs(n: int, short: int = 512, seed: int = 0) -> list[bytes]:
    """`n` JPEGs (quality 90) of a real photograph, each a different variant, short side `short` px."""
    from matplotlib import cbook

    base = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = ImageOps.mirror(base) if i % 2 else base
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
        w, h = img.size
        dx, dy = int(rng.integers(0, w // 8)), int(rng.integers(0, h // 8))
        img = img.crop((dx, dy, w - w // 8 + dx, h - h // 8 + dy))  # a shifted 7/8 window
        s = short / min(img.size)
        img = img.resize((round(img.size[0] * s), round(img.size[1] * s)), Image.BICUBIC)
        b = io.BytesIO()
        img.save(b, "JPEG", quality=90)
        out.append(b.getvalue())
    return out


def open_clip_batch(transform):
    def run(datas: list[bytes]) -> torch.Tensor:
        return torch.stack([transform(Image.open(io.BytesIO(d))) for d in datas])
    return run


def ours_batch(size: int, draft: bool):
    tf = ImageTransform(TransformConfig(image_size=size, train=False, jpeg_draft=draft))

    def run(datas: list[bytes]) -> torch.Tensor:
        return normalize_batch(to_uint8_batch([tf(d, None) for d in datas]))
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256, help="distinct JPEGs")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=8, help="passes over the images, pipelines alternating")
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args(argv)
    from common import import_open_clip

    image_transform = import_open_clip().transform.image_transform

    torch.set_num_threads(1)
    t = time.time()
    datas = photo_jpegs(a.images)
    kb = statistics.mean(len(d) for d in datas) / 1024
    print(f"{a.images} JPEGs of a photo, {Image.open(io.BytesIO(datas[0])).size} etc. (short side 512, "
          f"{kb:.0f} KB mean) made in {time.time() - t:.1f}s; batch {a.batch}, output {a.size}px, 1 thread")
    sides = {"open_clip (PIL + torchvision)": open_clip_batch(image_transform(a.size, is_train=False)),
             "ours (draft decode, default)": ours_batch(a.size, True),
             "ours (full decode)": ours_batch(a.size, False)}
    batches = [datas[i:i + a.batch] for i in range(0, len(datas) - a.batch + 1, a.batch)]
    ref = {name: run(batches[0]) for name, run in sides.items()}  # warm-up, and the outputs to compare
    per_image = {name: [] for name in sides}
    for r in range(a.rounds):
        for i, b in enumerate(batches):
            order = list(sides) if (r + i) % 2 == 0 else list(sides)[::-1]
            for name in order:
                c0 = time.process_time()
                sides[name](b)
                per_image[name].append((time.process_time() - c0) / len(b))
    base_name = "open_clip (PIL + torchvision)"
    print(f"{'pipeline':<32}{'images/s':>10}{'ms/image':>10}{'mean |x - open_clip|':>22}   (in 1/255 levels; medians over "
          f"{len(per_image[base_name])} batches, CPU time)")
    rate = {}
    levels = 255 * torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)  # normalised units -> 1/255 levels
    for name in sides:
        sec = statistics.median(per_image[name])
        rate[name] = 1 / sec
        diff = ((ref[name] - ref[base_name]).abs() * levels).mean().item()
        print(f"{name:<32}{rate[name]:>10.1f}{1000 * sec:>10.2f}{diff:>22.4f}")
    full = rate["ours (full decode)"] / rate[base_name]
    print(f"ours without draft decode vs open_clip: ratio={full:.2f}")
    ours, base = rate["ours (draft decode, default)"], rate[base_name]
    print(f"benchmark: decode_throughput ours={ours:.1f} baseline={base:.1f} ratio={ours / base:.2f} unit=images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
