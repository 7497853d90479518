"""A tiny but real stage-2 setup: word-caption shards, a random Llama teacher, sidecars, overrides."""
from __future__ import annotations

import io
import random

from llm_fixtures import write_tiny_llama
from PIL import Image

from llm2clip_nemo.config import load_config
from llm2clip_nemo.data.shards import ShardSample, write_shards
from llm2clip_nemo.recipes.extract import ExtractConfig
from llm2clip_nemo.recipes.extract import run as extract

# The teacher's attention mode and caption length as the *_tiny configs set them; both are part of the
# teacher contract the fingerprint covers, so sidecars and training must agree on them (the tiny
# random teacher records no contract: the config's values are its contract).
TINY_TEACHER_BIDIRECTIONAL = "false"
TINY_TEACHER_MAX_LENGTH = 32
TINY_VISION = ["model.vision.image_size=16", "model.vision.patch_size=8", "model.vision.width=32",
               "model.vision.num_layers=2", "model.vision.num_heads=2", "model.vision.mlp_dim=64",
               "model.vision.embed_dim=32", "model.train_ds.transform.image_size=16"]


def image_bytes(i: int) -> bytes:
    rng = random.Random(i)
    img = Image.new("RGB", (20, 20), tuple(rng.randrange(256) for _ in range(3)))
    img.paste(tuple(rng.randrange(256) for _ in range(3)), (rng.randrange(10), rng.randrange(10), 15, 15))
    b = io.BytesIO()
    img.save(b, "PNG")
    return b.getvalue()


def make_shards(out, captions_short, captions_long, per_shard):
    """Shards of PNGs with alt text and a json long caption (None: the sample lacks the long field)."""
    samples = []
    for i, (short, long_) in enumerate(zip(captions_short, captions_long)):
        meta = {"long": long_} if long_ is not None else {"other": "x"}
        samples.append(ShardSample(key=f"{i:05d}", image=image_bytes(i), image_ext="png", txt=short, meta=meta))
    write_shards(samples, str(out), samples_per_shard=per_shard)
    return out


def word_shards(out, n: int, per_shard: int, seed: int = 0, vocab: int = 101):
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        words = lambda k: " ".join(f"w{rng.randrange(vocab - 3)}" for _ in range(k))  # noqa: E731
        samples.append(ShardSample(f"{seed}-{i:05d}", image_bytes(i + 1000 * seed), "png", words(3), {"long": words(9)}))
    write_shards(samples, str(out), samples_per_shard=per_shard)
    return out


def tiny_offline_setup(root, n_train=64, n_val=16):
    """(teacher dir, train shards, val shards) with sidecars extracted beside the shards."""
    teacher = write_tiny_llama(root / "teacher")
    train = word_shards(root / "train", n_train, 16, seed=1)
    val = word_shards(root / "val", n_val, 16, seed=2)
    for d in (train, val):
        extract(load_config(ExtractConfig, None, [f"data.urls={d}", f"teacher.path={teacher}", "progress=false",
                                                  f"teacher.bidirectional={TINY_TEACHER_BIDIRECTIONAL}",
                                                  f"teacher.max_length={TINY_TEACHER_MAX_LENGTH}"]))
    return teacher, train, val


def tiny_overrides(teacher, train, val, exp_dir, steps=10, **extra):
    over = [f"model.teacher.path={teacher}", f"model.train_ds.urls={train}",
            "model.train_ds.batch_size=8", "model.train_ds.shuffle_buffer=16",
            "model.train_ds.caption_fields={txt: 0.5, long: 0.5}", f"model.validation_ds.urls={val}",
            "model.train_ds.sidecar_dir=null", "model.validation_ds.sidecar_dir=null", f"model.teacher.bidirectional={TINY_TEACHER_BIDIRECTIONAL}",
            f"model.teacher.max_length={TINY_TEACHER_MAX_LENGTH}",
            "model.validation_ds.every_n_steps=5", f"trainer.max_steps={steps}", f"exp_manager.exp_dir={exp_dir}",
            "exp_manager.checkpoint_every_n_steps=5", "trainer.enable_progress_bar=false", *TINY_VISION]
    return over + [f"{k}={v}" for k, v in extra.items()]
