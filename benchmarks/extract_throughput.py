"""Extraction throughput: the `extract` recipe (Megatron teacher, length-bucketed batches, sidecar
writing) vs the naive Hugging Face loop (padded batches in input order, encode only, no writing)
on the same shards, threads and batch size, in the same run (each side in its own subprocess).

    .venv/bin/python benchmarks/extract_throughput.py [--samples 1000] [--batch 32] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_line, ensure_torchvision_importable, mixed_length_captions, peak_rss_mb, run_sides  # noqa: E402


def make_shards(root: Path, n: int) -> Path:
    import io

    from PIL import Image

    from llm2clip_nemo.data.shards import ShardSample, write_shards

    caps = mixed_length_captions(2 * n, seed=1)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    samples = [ShardSample(f"{i:06d}", buf.getvalue(), "png", caps[2 * i], {"long": caps[2 * i + 1]}) for i in range(n)]
    write_shards(samples, str(root / "shards"), samples_per_shard=250)
    return root / "shards"


def run_side(side: str, shards: str, out: str, batch: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    ensure_torchvision_importable()  # transformers imports torchvision where installed
    from llm2clip_nemo.formats.hf_io import embedded_llm_dir

    llm = embedded_llm_dir()
    if side == "ours":
        from llm2clip_nemo.config import load_config
        from llm2clip_nemo.recipes.extract import ExtractConfig, run

        cfg = load_config(ExtractConfig, None, [f"data.urls={shards}", f"data.sidecar_dir={out}", f"teacher.path={llm}",
                                                f"teacher.batch_size={batch}", "progress=false"])
        r = run(cfg)
        return {"captions_per_s": r["captions_per_s"], "captions": r["captions"], "peak_rss_mb": peak_rss_mb()}
    from llm2clip_nemo.data.spec import parse_sources
    from llm2clip_nemo.recipes.extract import read_shard_captions
    from llm2clip_nemo.text.hf_encoder import HFEncoder

    enc = HFEncoder.from_pretrained(llm)
    t0 = time.perf_counter()
    n = 0
    for url in parse_sources(shards)[0].urls:
        _, caps, _ = read_shard_captions(url, ["txt", "long"])
        flat = [c for row in caps for c in row if c]
        for i in range(0, len(flat), batch):
            ids, mask = enc.tokenize(flat[i:i + batch], max_length=256)
            enc.encode(ids, mask)
        n += len(flat)
    return {"captions_per_s": n / (time.perf_counter() - t0), "captions": n, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--side", choices=["ours", "baseline"])
    ap.add_argument("--shards")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.side:
        print(json.dumps(run_side(a.side, a.shards, a.out, a.batch, a.threads)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp), a.samples)
        res = run_sides(__file__, ["--shards", str(shards), "--batch", str(a.batch), "--threads", str(a.threads)],
                        extra={side: ["--out", str(Path(tmp) / f"sc-{side}")] for side in ("baseline", "ours")})
    print(f"{'side':<10} {'captions/s':>12} {'captions':>9} {'peak RSS MB':>12}")
    for side, r in res.items():
        print(f"{side:<10} {r['captions_per_s']:>12.1f} {r['captions']:>9} {r['peak_rss_mb']:>12.0f}")
    print(benchmark_line("extract_throughput", res["ours"]["captions_per_s"], res["baseline"]["captions_per_s"], "captions/s"))


if __name__ == "__main__":
    main()
