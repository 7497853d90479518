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
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res[side] = json.loads(out.stdout.strip().splitlines()[-1])
    return res
