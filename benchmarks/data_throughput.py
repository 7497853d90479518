"""Data throughput: decode + augment + batch at 224 px from JPEG shards, ours vs open_clip's webdataset way.

Both pipelines read the same shards with the same number of DataLoader workers in the same run,
draw the same RandomResizedCrop boxes (torchvision's algorithm, scale 0.9-1.0), resize bicubic to
224, normalise with the OpenAI CLIP mean/std and batch. The baseline is built the way open_clip's
`get_wds_dataset` does it: ResampledShards -> tarfile_to_samples -> shuffle -> decode("pilrgb")
-> to_tuple -> map(transform) -> batched. Ours is `ImageTextStream` (also resampled), reported
with libjpeg draft decoding (its default: decode at 1/2..1/8 scale when the crop keeps >= 224 px)
and without it. Rates are reported two ways: wall-clock samples/s, and CPU-normalised samples/s
(samples per CPU-second of the workers x number of workers), which stays comparable on a machine
shared with other jobs. The final line uses the CPU-normalised rate. Per-worker RSS is read from
/proc after the timed batches.

    .venv/bin/python benchmarks/data_throughput.py [--workers 2] [--images 1600] [--batch 64]
"""
from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llm2clip_nemo.data.config import StreamConfig  # noqa: E402
from llm2clip_nemo.data.shards import ShardSample, write_shards  # noqa: E402
from llm2clip_nemo.data.stream import ImageTextStream  # noqa: E402
from llm2clip_nemo.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, TransformConfig, random_resized_crop_box  # noqa: E402


def make_jpeg_shards(out_dir: str, n: int, per_shard: int, size=(512, 384)) -> str:
    """Photo-like JPEGs (smooth gradients + noise, ~40-60 KB at quality 90); 200 distinct images reused."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]

    def img(i):
        base = np.stack([(xx * (i % 7 + 1)) % 256, (yy * (i % 5 + 1)) % 256, (xx + yy + 13 * i) % 256], -1)
        arr = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
        b = io.BytesIO()
        Image.fromarray(arr).save(b, "JPEG", quality=90)
        return b.getvalue()

    distinct = [img(i) for i in range(min(n, 200))]
    man = write_shards((ShardSample(f"{i:07d}", distinct[i % len(distinct)], "jpg", f"caption {i}") for i in range(n)), out_dir,
                       samples_per_shard=per_shard)
    return os.path.join(out_dir, f"shard-{{000000..{len(man['shards']) - 1:06d}}}.tar")


class BaselineTransform:
    """PIL image -> normalised float tensor: the same RRC + bicubic resize, torchvision-style per-sample normalise."""

    def __init__(self, size: int):
        self.size = size
        self.mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
        self.std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        box = random_resized_crop_box(*img.size, (0.9, 1.0), (3 / 4, 4 / 3), random)
        out = img.resize((self.size, self.size), Image.BICUBIC, box=box)
        t = torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return (t - self.mean) / self.std


def baseline_loader(urls: str, batch: int, workers: int, size: int):
    import webdataset as wds

    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls),
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(1000, initial=1000),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=BaselineTransform(size)),
        wds.to_tuple("image", "text"),
        wds.batched(batch, partial=False),
    )
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=False)


def ours_loader(urls: str, batch: int, workers: int, size: int, draft: bool):
    cfg = StreamConfig(urls=urls, resampled=True, batch_size=batch, shuffle_buffer=1000, open_shards=4,
                       transform=TransformConfig(image_size=size, jpeg_draft=draft))
    return ImageTextStream(cfg).loader(num_workers=workers).loader


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process (fields 14, 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(loader, batches: int, warmup: int) -> tuple[float, float, list[float]]:
    """(wall samples/s, samples per worker-CPU-second x workers, worker RSS MB).

    The CPU-normalised rate is what the pipeline would do with its workers' cores to itself: on a
    shared machine wall-clock rates swing with other people's load, CPU time does not."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    pids = [w.pid for w in getattr(it, "_workers", [])]
    cpu0 = sum(_cpu_s(p) for p in pids)
    n, t = 0, time.perf_counter()
    for _ in range(batches):
        b = next(it)
        x = b["image"] if isinstance(b, dict) else b[0]
        assert x.shape[1:] == (3, 224, 224) and x.dtype == torch.float32
        n += x.shape[0]
    rate = n / (time.perf_counter() - t)
    cpu_rate = n / max(sum(_cpu_s(p) for p in pids) - cpu0, 1e-9) * len(pids)
    rss = [_rss_mb(p) for p in pids]
    del it
    return rate, cpu_rate, rss


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--images", type=int, default=1600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=16, help="timed batches per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        urls = make_jpeg_shards(d, a.images, per_shard=100)
        print(f"wrote {a.images} JPEGs 512x384 in {time.time() - t:.1f}s; {a.workers} workers, batch {a.batch}, {a.size}px")
        runs = {"baseline (wds, open_clip style)": lambda: baseline_loader(urls, a.batch, a.workers, a.size),
                "ours (draft decode, default)": lambda: ours_loader(urls, a.batch, a.workers, a.size, True),
                "ours (full decode)": lambda: ours_loader(urls, a.batch, a.workers, a.size, False)}
        rates = {k: [] for k in runs}
        cpu_rates = {k: [] for k in runs}
        rss = {}
        for _ in range(a.repeats):  # interleaved, so load from other processes hits all alike
            for name, make in runs.items():
                r, c, m = measure(make(), a.batches, warmup=2)
                rates[name].append(r)
                cpu_rates[name].append(c)
                rss[name] = m
        print(f"{'pipeline':<34}{'wall samples/s':>16}{'CPU-normalised samples/s':>26}   worker RSS MB (last run)")
        for name in runs:
            print(f"{name:<34}{statistics.median(rates[name]):>16.1f}{statistics.median(cpu_rates[name]):>26.1f}   "
                  f"{[round(x) for x in rss[name]]}   runs: wall {[round(x) for x in rates[name]]}, "
                  f"cpu {[round(x) for x in cpu_rates[name]]}")
    med = {k: statistics.median(v) for k, v in cpu_rates.items()}
    wall = {k: statistics.median(v) for k, v in rates.items()}
    ours, base, full = med["ours (draft decode, default)"], med["baseline (wds, open_clip style)"], med["ours (full decode)"]
    print(f"wall-clock ratio ours/baseline={wall['ours (draft decode, default)'] / wall['baseline (wds, open_clip style)']:.2f}; "
          f"ours without draft decode vs baseline (CPU-normalised): ratio={full / base:.2f}")
    print("values below: CPU-normalised samples/s (samples per worker-CPU-second x workers)")
    print(f"benchmark: data_throughput ours={ours:.1f} baseline={base:.1f} ratio={ours / base:.2f} unit=samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
