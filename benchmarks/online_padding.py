"""Online teacher padding: our online path (captions prepared by the teacher contract, each length
bucket padded to its own longest caption) vs the former stream's fixed 77-token padding (every
caption padded and cut to 77 tokens), on the same mixed-length training batches, same teacher,
threads and batch size, in one run (each side in its own subprocess for its peak RSS).

The baseline also cuts captions at 77 tokens (the fault this replaces), so it embeds less text
than ours for the long captions; ours embeds up to the contract's max_length.

    .venv/bin/python benchmarks/online_padding.py [--n 1024] [--batch 32] [--bucket 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_line, ensure_torchvision_importable, mixed_length_captions, peak_rss_mb, run_sides  # noqa: E402

FIXED = 77


def run_side(side: str, n: int, batch: int, bucket: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    ensure_torchvision_importable()  # transformers imports torchvision where installed
    from llm2clip_nemo.formats.hf_io import embedded_llm_dir
    from llm2clip_nemo.runtime import init_parallel
    from llm2clip_nemo.text.teacher import Teacher

    texts = mixed_length_captions(n)
    batches = [texts[i:i + batch] for i in range(0, n, batch)]
    teacher = Teacher.load(embedded_llm_dir(), init_parallel(1))
    if side == "ours":
        def step(caps):
            return teacher.encode_online(caps, batch_size=bucket)
    else:
        tok = teacher.tokenizer

        def step(caps):
            enc = tok(caps, padding="max_length", truncation=True, max_length=FIXED, return_tensors="pt")
            with torch.inference_mode():
                return teacher.encoder.encode(enc["input_ids"], enc["attention_mask"])
    step(batches[0])  # warm-up
    t0 = time.perf_counter()
    out = [step(b) for b in batches]
    dt = time.perf_counter() - t0
    if side == "ours":
        tokens = sum(int(teacher.prepare(b)[1].sum()) for b in batches)
    else:
        tokens = sum(int(teacher.tokenizer(b, truncation=True, max_length=FIXED, return_tensors="pt",
                                           padding=True)["attention_mask"].sum()) for b in batches)
    return {"captions_per_s": n / dt, "seconds": dt, "peak_rss_mb": peak_rss_mb(), "caption_tokens": tokens,
            "checksum": torch.cat(out)[:8].sum().item()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32, help="captions per training batch (per rank)")
    ap.add_argument("--bucket", type=int, default=8, help="ours: captions per length bucket (teacher.batch_size)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--side", choices=["ours", "baseline"])
    a = ap.parse_args()
    if a.side:
        print(json.dumps(run_side(a.side, a.n, a.batch, a.bucket, a.threads)))
        return
    res = run_sides(__file__, ["--n", str(a.n), "--batch", str(a.batch), "--bucket", str(a.bucket),
                               "--threads", str(a.threads)])
    print(f"{'side':<10} {'captions/s':>12} {'seconds':>9} {'caption tokens':>15} {'peak RSS MB':>12}")
    for side, r in res.items():
        print(f"{side:<10} {r['captions_per_s']:>12.1f} {r['seconds']:>9.1f} {r['caption_tokens']:>15} "
              f"{r['peak_rss_mb']:>12.0f}")
    print(benchmark_line("online_padding", res["ours"]["captions_per_s"], res["baseline"]["captions_per_s"],
                         "captions/s"))


if __name__ == "__main__":
    main()
