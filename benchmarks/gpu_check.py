"""The GPU check's measurements (run by gpu_check.sh after its offline install), one process, one device.

Rows, each against its baseline in the same run, then one table:
- train B/16 and L/14, bf16 autocast, compile off and on: our ViT + adapter + InfoNCE vs open_clip's
  ViT + the same adapter + ClipLoss (`train_throughput.py`), samples/s, TFLOP/s and MFU of each
  (model FLOPs from `runtime.flops`, peak from its GPU table);
- FSDP2 at one rank (B/16): ours under `engine.parallelize(data_parallel=fsdp2)` vs plain open_clip,
  or "not available" when this build has no `llm2clip_nemo.engine.parallelize`;
- online teacher: `Teacher.encode_online` (length buckets) vs the plain Hugging Face loop (padded
  batches in input order) on the same mixed-length captions, captions/s.
A row that fails prints its error in the table, and the rest still run; rows past the time budget
are listed as skipped. `--dry-run`: CPU, tiny sizes (the tiny ViT for both presets, the 'eager'
compile backend: dynamo tracing without code generation), to show the script runs end to end.

    python benchmarks/gpu_check.py [--dry-run] [--out DIR] [--budget-s 420]
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

GPU_TRAIN = {"B/16": ["--batch", "128", "--steps", "10", "--rounds", "3", "--warmup", "3"],
             "L/14": ["--batch", "64", "--steps", "5", "--rounds", "3", "--warmup", "3"]}
DRY_TRAIN = ["--preset", "tiny", "--batch", "4", "--steps", "1", "--rounds", "1", "--warmup", "1"]


def has_open_clip() -> bool:
    return importlib.util.find_spec("open_clip") is not None


def train_row(label: str, argv: list[str], out: Path) -> dict:
    import train_throughput

    path = out / f"train_{len(list(out.glob('train_*.json')))}.json"
    rc = train_throughput.main([*argv, "--json", str(path)])
    if rc != 0:
        return {"row": label, "error": f"train_throughput exit {rc}"}
    r = json.loads(path.read_text())
    row = {"row": label, "unit": "samples/s", "ours": r["sides"]["ours"]}
    if "open_clip" in r["sides"]:
        row["baseline"] = r["sides"]["open_clip"]
    return row


def teacher_row(device: str, n: int, batch: int, bucket: int) -> dict:
    """Our online teacher (contract-prepared captions, length buckets) vs the HF loop, captions/s."""
    import torch
    from common import mixed_length_captions

    from llm2clip_nemo.formats.hf_io import embedded_llm_dir
    from llm2clip_nemo.runtime import init_parallel
    from llm2clip_nemo.text.hf_encoder import HFEncoder
    from llm2clip_nemo.text.teacher import Teacher

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    path = embedded_llm_dir()
    texts = mixed_length_captions(n)
    batches = [texts[i:i + batch] for i in range(0, n, batch)]
    teacher = Teacher.load(path, init_parallel(1), params_dtype=dtype)
    hf = HFEncoder.from_pretrained(path, dtype=dtype).to(device)

    def ours(caps):
        return teacher.encode_online(caps, batch_size=bucket)

    def baseline(caps):
        ids, mask = hf.tokenize(caps, max_length=teacher.contract.max_length)
        return hf.encode(ids.to(device), mask.to(device))

    rates = {}
    for name, fn in (("ours", ours), ("baseline", baseline)):
        fn(batches[0])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for b in batches:
            out = fn(b)
        float(out.sum())
        if device == "cuda":
            torch.cuda.synchronize()
        rates[name] = {"samples_per_s": n / (time.perf_counter() - t0)}
    return {"row": f"online teacher SmolLM2 ({n} captions, batch {batch})", "unit": "captions/s", **rates}


def fmt(side: dict | None) -> str:
    if not side:
        return "n/a"
    mfu = side.get("mfu")
    extra = "" if "tflops" not in side else f" {side['tflops']:.2f} TF/s MFU " + ("n/a" if mfu is None else f"{100 * mfu:.1f}%")
    return f"{side['samples_per_s']:.1f}{extra}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: the whole script end to end")
    p.add_argument("--out", default="gpu_check_out", help="folder for the per-row JSON and gpu_check.json")
    p.add_argument("--budget-s", type=float, default=420.0, help="rows that would start later are skipped")
    a = p.parse_args(argv)
    import torch
    from common import ensure_torchvision_importable

    ensure_torchvision_importable()
    device = "cpu" if a.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False): run it on a GPU "
              "machine, or use --dry-run", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    oc = has_open_clip()
    base = ["--device", device, "--dtype", "bf16" if device == "cuda" else "fp32"] + ([] if oc else ["--no-baseline"])
    compile_flags = ["--compile"] + (["--compile-backend", "eager"] if a.dry_run else [])
    rows: list[tuple[str, object]] = []
    for preset in ("B/16", "L/14"):
        size = DRY_TRAIN if a.dry_run else ["--preset", preset, *GPU_TRAIN[preset]]
        tag = f"{preset}" + (" (dry run: tiny)" if a.dry_run else "")
        rows.append((f"train {tag} eager", lambda s=size: [*base, *s]))
        rows.append((f"train {tag} compile", lambda s=size: [*base, *s, *compile_flags]))
    fsdp_size = DRY_TRAIN if a.dry_run else ["--preset", "B/16", *GPU_TRAIN["B/16"]]
    fsdp_label = "train B/16" + (" (dry run: tiny)" if a.dry_run else "") + " FSDP2 1 rank"
    rows.append((fsdp_label, lambda: [*base, *fsdp_size, "--fsdp2"]))
    rows.append(("teacher", None))

    from train_throughput import fsdp2_available

    t_start, results = time.time(), []
    for label, make in rows:
        elapsed = time.time() - t_start
        print(f"\n=== {label} (at {elapsed:.0f} s)", flush=True)
        if elapsed > a.budget_s:
            results.append({"row": label, "error": f"skipped: past the {a.budget_s:.0f} s budget"})
            continue
        if "FSDP2" in label and not fsdp2_available():
            results.append({"row": label, "error": "not available: llm2clip_nemo.engine.parallelize is not in this build"})
            continue
        try:
            if make is None:
                results.append(teacher_row(device, *((16, 8, 4) if a.dry_run else (2048, 256, 64))))
            else:
                results.append(train_row(label, make(), out))
        except Exception as e:  # noqa: BLE001  one failing row (OOM, a compile error) must not hide the others
            traceback.print_exc()
            results.append({"row": label, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    total = time.time() - t_start
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    print(f"\n=== gpu_check: {name}, torch {torch.__version__}, {total:.0f} s"
          + ("" if oc else "; open_clip not installed: baseline n/a"))
    labels = [r["row"] + ("" if "error" in r else f" ({r['unit']})") for r in results]
    w = max(len(x) for x in [*labels, "row"])
    print(f"| {'row':<{w}} | {'ours':<34} | {'baseline (open_clip / HF loop)':<34} | ratio |")
    print(f"|{'-' * (w + 2)}|{'-' * 36}|{'-' * 36}|-------|")
    for label, r in zip(labels, results):
        if "error" in r:
            print(f"| {label:<{w}} | {r['error']:<71} |       |")
            continue
        ours, bl = r["ours"], r.get("baseline")
        ratio = f"{ours['samples_per_s'] / bl['samples_per_s']:.2f}" if bl else "n/a"
        print(f"| {label:<{w}} | {fmt(ours):<34} | {fmt(bl):<34} | {ratio:>5} |")
    (out / "gpu_check.json").write_text(json.dumps({"device": name, "torch": torch.__version__, "seconds": total,
                                                    "rows": results}, indent=1))
    failed = [r["row"] for r in results if "error" in r and not r["error"].startswith(("not available", "skipped"))]
    print(f"gpu_check: {len(results) - len(failed)} of {len(results)} rows done"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
