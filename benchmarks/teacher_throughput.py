"""Teacher throughput: our Megatron teacher (length-bucketed batches, order restored) vs the
Hugging Face model run the plain way (padded batches in input order), same captions, dtype,
threads and batch size, in the same run. Each side runs in its own subprocess so peak RSS is
measured per side.

    .venv/bin/python benchmarks/teacher_throughput.py [--n 2000] [--batch 32] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_line, ensure_torchvision_importable, mixed_length_captions, peak_rss_mb, run_sides  # noqa: E402


def run_side(side: str, n: int, batch: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    ensure_torchvision_importable()  # transformers imports torchvision where installed
    from llm2clip_nemo.formats.hf_io import embedded_llm_dir

    texts = mixed_length_captions(n)
    path = embedded_llm_dir()
    if side == "ours":
        from llm2clip_nemo.runtime import init_parallel
        from llm2clip_nemo.text.teacher import Teacher

        teacher = Teacher.load(path, init_parallel(1))
        teacher.encode_texts(texts[:batch], batch_size=batch)  # warm-up
        t0 = time.perf_counter()
        emb = teacher.encode_texts(texts, batch_size=batch)
    else:
        from llm2clip_nemo.text.hf_encoder import HFEncoder

        enc = HFEncoder.from_pretrained(path)
        ids, mask = enc.tokenize(texts[:batch])
        enc.encode(ids, mask)  # warm-up
        t0 = time.perf_counter()
        chunks = []
        for i in range(0, n, batch):
            ids, mask = enc.tokenize(texts[i:i + batch])
            chunks.append(enc.encode(ids, mask))
        emb = torch.cat(chunks)
    dt = time.perf_counter() - t0
    return {"captions_per_s": n / dt, "seconds": dt, "peak_rss_mb": peak_rss_mb(), "checksum": emb[:8].sum().item()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--side", choices=["ours", "baseline"])
    a = ap.parse_args()
    if a.side:
        print(json.dumps(run_side(a.side, a.n, a.batch, a.threads)))
        return
    res = run_sides(__file__, ["--n", str(a.n), "--batch", str(a.batch), "--threads", str(a.threads)])
    print(f"{'side':<10} {'captions/s':>12} {'seconds':>9} {'peak RSS MB':>12}")
    for side, r in res.items():
        print(f"{side:<10} {r['captions_per_s']:>12.1f} {r['seconds']:>9.1f} {r['peak_rss_mb']:>12.0f}")
    print(benchmark_line("teacher_throughput", res["ours"]["captions_per_s"], res["baseline"]["captions_per_s"], "captions/s"))


if __name__ == "__main__":
    main()
