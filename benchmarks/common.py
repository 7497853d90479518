"""Shared benchmark helpers: caption corpora of mixed lengths, peak RSS, the final line format."""
from __future__ import annotations

import json
import random
import resource
import subprocess
import sys

WORDS = ("a the red small old young happy dog cat bird tree house car street river mountain city "
         "woman man child playing running sitting holding wearing blue green yellow bright dark "
         "photo picture emoji face heart hand sun moon star flower fruit apple table chair window "
         "beside under above near with and of in on at through during morning evening night").split()


def mixed_length_captions(n: int, seed: int = 0) -> list[str]:
    """Alt-text-like short captions mixed with long dense re-captions (lengths as in LLM2CLIP's data)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        k = rng.randint(1, 6) if r < 0.5 else rng.randint(10, 30) if r < 0.85 else rng.randint(60, 120)
        out.append(" ".join(rng.choice(WORDS) for _ in range(k)))
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def benchmark_line(name: str, ours: float, baseline: float, unit: str) -> str:
    return f"benchmark: {name} ours={ours:.2f} baseline={baseline:.2f} ratio={ours / baseline:.2f} unit={unit}"


def run_sides(script: str, args: list[str], extra: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """Run `script --side baseline|ours ARGS` in turn, each in its own process (so peak RSS is per
    side); return the JSON each printed last."""
    res = {}
    for side in ("baseline", "ours"):
        cmd = [sys.executable, script, "--side", side, *args, *((extra or {}).get(side, []))]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:  # the side's own error, not only CalledProcessError's command line
            sys.stderr.write(out.stderr[-4000:])
            out.check_returncode()
        res[side] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def ensure_torchvision_importable() -> None:
    """Make `import torchvision` work in .bench-venv, where torchvision is the wheel built against
    torch 2.13.0 for CUDA while torch is the CPU build: its C extension (nms, roi_align...) cannot
    load, and torchvision 0.28 then fails at import registering fake kernels for the undefined ops
    `torchvision::nms` and `torchvision::qnms`, which breaks open_clip and also transformers (it
    imports torchvision when installed). Defining those two schemas (no kernel: calling them raises)
    lets the import finish; open_clip's models, losses and PIL/torch transforms and transformers' text
    models use none of these ops. Does nothing where torchvision imports (or is absent)."""
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError:
        return
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e):
            raise
        import torch

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(lib)  # a Library object unregisters its ops when collected
        import torchvision  # noqa: F401,F811


def import_open_clip():
    """`import open_clip` (after `ensure_torchvision_importable`)."""
    import importlib

    ensure_torchvision_importable()
    return importlib.import_module("open_clip")


_KEEP: list = []
