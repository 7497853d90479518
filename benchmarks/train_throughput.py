"""Training throughput: our ViT + LLM2CLIP adapter + InfoNCE vs open_clip's training step.

Both sides run in one process with one torch, on the same synthetic batch: pixels plus offline
teacher embeddings (the LLM teacher is frozen and pre-extracted, so it is not part of a step).
A step is zero_grad -> forward -> loss -> backward -> AdamW step.
- ours: `vision.VisionTransformer` (megatron TransformerBlock; TE spec on GPU when usable)
  + `text.adapter.LLM2CLIPAdapter` + `losses.ClipInfoNCELoss`.
- baseline: open_clip's `VisionTransformer` of the same size + the same adapter (open_clip has
  none; a plain torch module, identical on both sides) + open_clip's `ClipLoss` with a learnable
  logit scale, normalised features as open_clip's CLIP does.
Timing alternates the two sides round by round (on CPU every single step: fair under a noisy shared
CPU) and reports medians.

MFU of both sides: model FLOPs per sample from `runtime.flops.train_flops_per_sample` (the same
count for both: same ViT shape, same adapter) against `runtime.flops.peak_flops` (the GPU's dense
bf16/FP8 datasheet peak; on CPU an fp32 GEMM measured once at this run's thread count, cached).

open_clip needs torchvision, which the project's CPU venv lacks: `make bench` builds .bench-venv
(our package + open_clip_torch + torchvision) and runs this with it:
  .bench-venv/bin/python benchmarks/train_throughput.py                      # CPU, tiny
  python benchmarks/train_throughput.py --device cuda --preset L/14 --dtype bf16 --batch 128 [--fp8]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preset", default=None, help="ViT preset (tiny, B/16, L/14, H/14, g/14); "
                   "default tiny on cpu, B/16 on cuda")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="autocast dtype; default "
                   "fp32 on cpu, bf16 on cuda")
    p.add_argument("--fp8", action="store_true", help="ours in FP8 (TE, H100); the baseline stays bf16")
    p.add_argument("--batch", type=int, default=None, help="default 32 on cpu, 128 on cuda")
    p.add_argument("--teacher-dim", type=int, default=576, help="teacher embedding size (SmolLM2: 576)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 1 cpu, 20 cuda)")
    p.add_argument("--rounds", type=int, default=None, help="alternating timing rounds (default 41 cpu, 5 cuda): "
                   "on a shared CPU, alternating every step keeps both sides under the same background load")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads, the same for both "
                   "sides (default 1 on cpu: on a shared, loaded box more threads oversubscribe the cores "
                   "and the timings become noise; torch's default on cuda)")
    p.add_argument("--clock", default=None, choices=["wall", "process"], help="what a step's time is: "
                   "'wall' (perf_counter) or 'process' (this process's CPU time, valid with 1 thread: on a "
                   "shared CPU it leaves out the time other tenants hold the cores). Default: process on cpu "
                   "with 1 thread, wall otherwise. Both are printed.")
    p.add_argument("--recompute", action="store_true", help="activation checkpointing on both sides")
    p.add_argument("--compile", action="store_true", help="torch.compile the vision tower on both sides")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (the GPU check's CPU "
                   "dry run uses 'eager': dynamo tracing without code generation)")
    p.add_argument("--fsdp2", action="store_true", help="ours: the vision tower under FSDP2 at one rank "
                   "(`engine.parallelize`, data_parallel=fsdp2); the baseline stays plain")
    p.add_argument("--no-baseline", action="store_true", help="ours only (where open_clip is not installed)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def fsdp2_available() -> bool:
    """Whether this build has the engine's `parallelize` (FSDP2), the one way we apply FSDP2."""
    try:
        return importlib.util.find_spec("llm2clip_nemo.engine.parallelize") is not None
    except ModuleNotFoundError:  # no llm2clip_nemo.engine package at all
        return False


def build_ours(vit_cfg, adapter_cfg, groups, device, compile_vit=None, fsdp2=False):
    from llm2clip_nemo.losses import ClipInfoNCELoss
    from llm2clip_nemo.text.adapter import LLM2CLIPAdapter
    from llm2clip_nemo.vision import VisionTransformer

    vit = VisionTransformer(vit_cfg, groups).to(device).train()
    adapter = LLM2CLIPAdapter(*adapter_cfg).to(device).train()
    loss_fn = ClipInfoNCELoss().to(device)
    if fsdp2:
        from llm2clip_nemo.engine.parallelize import ParallelizeConfig, parallelize

        parallelize(vit, ParallelizeConfig(data_parallel="fsdp2"), groups.vision_dp_group)
    run_vit = torch.compile(vit, backend=compile_vit) if compile_vit else vit

    def loss_of(pixels, teacher):
        return loss_fn(run_vit(pixels), adapter(teacher))

    return [vit, adapter, loss_fn], loss_of


def build_open_clip(vit_cfg, adapter_cfg, device, compile_vit=None):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import import_open_clip

    import_open_clip()
    from open_clip.loss import ClipLoss
    from open_clip.transformer import VisionTransformer as OCVisionTransformer

    from llm2clip_nemo.text.adapter import LLM2CLIPAdapter

    vit = OCVisionTransformer(
        image_size=vit_cfg.image_size, patch_size=vit_cfg.patch_size, width=vit_cfg.width,
        layers=vit_cfg.num_layers, heads=vit_cfg.num_heads, mlp_ratio=vit_cfg.mlp_dim / vit_cfg.width,
        output_dim=vit_cfg.embed_dim,
    ).to(device).train()
    if vit_cfg.recompute:
        vit.set_grad_checkpointing(True)
    adapter = LLM2CLIPAdapter(*adapter_cfg).to(device).train()
    logit_scale = torch.nn.Parameter(torch.tensor(2.6592, device=device))
    clip_loss = ClipLoss()
    run_vit = torch.compile(vit, backend=compile_vit) if compile_vit else vit

    def loss_of(pixels, teacher):
        img = F.normalize(run_vit(pixels), dim=-1)
        txt = F.normalize(adapter(teacher), dim=-1)
        return clip_loss(img, txt, logit_scale.clamp(max=4.6052).exp())

    holder = torch.nn.ParameterList([logit_scale])
    return [vit, adapter, holder], loss_of


def make_step(modules, loss_of, autocast):
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)

    def step(pixels, teacher):
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_of(pixels, teacher)
        loss.backward()
        opt.step()
        return loss

    return step, sum(p.numel() for p in params)


def timed(step, pixels, teacher, steps: int, device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per step over `steps` steps."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step(pixels, teacher)
    float(loss)  # forces completion of the last step on every device
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from llm2clip_nemo.runtime import init_parallel, seed_everything
    from llm2clip_nemo.runtime.flops import peak_flops, train_flops_per_sample
    from llm2clip_nemo.runtime.throughput import ThroughputMeter
    from llm2clip_nemo.text.adapter import AdapterConfig
    from llm2clip_nemo.vision import ViTConfig

    cuda = args.device == "cuda"
    threads = args.threads or (None if cuda else 1)
    if threads:
        torch.set_num_threads(threads)
    if cuda and not torch.cuda.is_available():
        print("--device cuda but CUDA is not available", file=sys.stderr)
        return 2
    preset = args.preset or ("B/16" if cuda else "tiny")
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    batch = args.batch or (128 if cuda else 32)
    steps = args.steps or (20 if cuda else 1)
    rounds = args.rounds or (5 if cuda else 41)
    warnings.filterwarnings("ignore")  # megatron's deprecation chatter would drown the table
    if args.fsdp2 and not fsdp2_available():
        print("--fsdp2: FSDP2 not available: llm2clip_nemo.engine.parallelize is not in this build", file=sys.stderr)
        return 2

    groups = init_parallel(1)
    seed_everything(0)
    vit_cfg = ViTConfig.from_preset(preset, recompute=args.recompute, fp8=args.fp8,
                                    transformer_impl="auto" if cuda else "local")
    adapter_cfg = (AdapterConfig(), args.teacher_dim, vit_cfg.embed_dim)  # (config, input size, joint size)
    device = torch.device(args.device)
    amp_dtype = torch.bfloat16 if dtype == "bf16" else None

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=args.device, dtype=amp_dtype)

    gen = torch.Generator(device="cpu").manual_seed(0)
    pixels = torch.randn(batch, 3, vit_cfg.image_size, vit_cfg.image_size, generator=gen).to(device)
    teacher = torch.randn(batch, args.teacher_dim, generator=gen).to(device)

    backend = args.compile_backend if args.compile else None
    ours_modules, ours_loss = build_ours(vit_cfg, adapter_cfg, groups, device, backend, args.fsdp2)
    sides = {"ours": make_step(ours_modules, ours_loss, autocast)}
    if not args.no_baseline:
        base_modules, base_loss = build_open_clip(dataclasses.replace(vit_cfg, fp8=False), adapter_cfg, device,
                                                  backend)
        sides["open_clip"] = make_step(base_modules, base_loss, autocast)
    impl = ours_modules[0].impl + ("+fp8" if ours_modules[0].fp8 else "")
    for step, _ in sides.values():
        timed(step, pixels, teacher, args.warmup, args.device)
    wall = {name: [] for name in sides}
    cpu = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]  # no side always goes first
        for name in order:
            w, c = timed(sides[name][0], pixels, teacher, steps, args.device)
            wall[name].append(w)
            cpu[name].append(c)
    clock = args.clock or ("process" if not cuda and torch.get_num_threads() == 1 else "wall")
    if clock == "process" and torch.get_num_threads() != 1:
        print("--clock process needs --threads 1 (CPU time of several threads is not step time)", file=sys.stderr)
        return 2
    per_step = cpu if clock == "process" else wall

    peak = peak_flops(args.device, fp8=args.fp8, threads=torch.get_num_threads())
    meter = ThroughputMeter(train_flops_per_sample(vit_cfg, adapter_cfg[0], adapter_cfg[1]), peak, world_size=1)
    peak_src = ("measured fp32 GEMM" if not cuda else "datasheet, dense " + ("fp8" if args.fp8 else "bf16"))
    print(f"device={args.device} ({torch.cuda.get_device_name() if cuda else 'CPU'}, "
          f"{torch.get_num_threads()} threads) torch={torch.__version__} preset={preset} image={vit_cfg.image_size} "
          f"batch={batch} dtype={dtype} ours_impl={impl} compile={backend} fsdp2={args.fsdp2} "
          f"steps={steps}x{rounds} rounds")
    print(f"model FLOPs/sample {meter.flops_per_sample / 1e9:.3f} G; peak "
          + (f"{peak / 1e12:.3f} TFLOP/s ({peak_src})" if peak else "unknown for this GPU (MFU n/a)"))
    print(f"{'side':<10} {'params':>12} {'wall s/step':>12} {'cpu s/step':>11} {'samples/s':>11} {'TFLOP/s':>9}"
          f" {'MFU':>7}   (medians; samples/s from the {clock} clock)")
    rates, results = {}, {}
    for name, (_, nparams) in sides.items():
        r = meter.rates(batch, statistics.median(per_step[name]))
        rates[name] = r["samples_per_s"]
        results[name] = {**r, "params": nparams}
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.2f}%"
        print(f"{name:<10} {nparams:>12,} {statistics.median(wall[name]):>12.4f} "
              f"{statistics.median(cpu[name]):>11.4f} {rates[name]:>11.2f} {r['tflops']:>9.3f} {mfu:>7}")
    ratio = None
    if "open_clip" in sides:
        wall_ratio = statistics.median(wall["open_clip"]) / statistics.median(wall["ours"])
        print(f"wall-clock ratio ours/open_clip: {wall_ratio:.3f}")
        ratio = rates["ours"] / rates["open_clip"]
        print(f"benchmark: train_throughput ours={rates['ours']:.2f} baseline={rates['open_clip']:.2f} "
              f"ratio={ratio:.3f} unit=samples/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": preset, "device": args.device, "compile": backend, "fsdp2": args.fsdp2,
                       "batch": batch, "peak_flops": peak, "sides": results, "ratio": ratio}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
