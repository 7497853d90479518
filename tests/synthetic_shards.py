"""Small synthetic image-text shards, written with the real writer: a test helper (not library code).

Solid-colour JPEGs with captions that encode their key, so a test can check what it got back.
Not demo evidence (the demo uses Twemoji, see demo_dataset.py)."""
from __future__ import annotations

import io
import os

from PIL import Image

from llm2clip_nemo.data.config import StreamConfig
from llm2clip_nemo.data.shards import ShardSample, write_shards
from llm2clip_nemo.data.transforms import TransformConfig


def jpeg(i: int, size=(24, 20)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, (i * 37 % 256, i * 11 % 256, 90)).save(b, "JPEG", quality=80)
    return b.getvalue()


def write_synthetic_shards(out_dir: str, n_shards: int, per_shard: int, prefix: str = "shard", tag: str = "") -> list[str]:
    samples = [
        ShardSample(f"{tag}{i:06d}", jpeg(i), "jpg", f"alt {tag}{i}",
                    {"long": f"a long caption of {tag}{i}", "short_list": [f"s1 {i}", f"s2 {i}"]})
        for i in range(n_shards * per_shard)
    ]
    man = write_shards(samples, out_dir, prefix=prefix, samples_per_shard=per_shard)
    return [os.path.join(out_dir, s["name"]) for s in man["shards"]]


def tiny_stream_config(urls: str, **kw) -> StreamConfig:
    """A StreamConfig sized for CPU tests (16 px images, small windows); kw override fields."""
    base = dict(urls=urls, batch_size=4, shuffle_buffer=8, open_shards=2, seed=3,
                caption_fields={"txt": 0.5, "long": 0.5}, transform=TransformConfig(image_size=16))
    base.update(kw)
    if isinstance(base["transform"], dict):
        base["transform"] = TransformConfig(**base["transform"])
    return StreamConfig(**base)
