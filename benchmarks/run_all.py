"""Every benchmark in benchmarks/, one after the other, each printing its table and its final
`benchmark:` line; a summary of those lines at the end. `make bench` runs this in .bench-venv
(our package + open_clip_torch + torchvision), so no benchmark needs a hand-made environment.

Sizes default to small ones (`--size small`: 15-30 minutes on a 2-core machine shared with other jobs);
`--size full` runs each benchmark with its own defaults (the README's figures). `--only NAME,...`
picks benchmarks by script name. Exit status 1 when any benchmark failed or printed no
`benchmark:` line.

    .bench-venv/bin/python benchmarks/run_all.py [--size small|full] [--only train_throughput,...]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SMALL = {  # script -> arguments of the small run
    "train_throughput": ["--rounds", "21"],
    "decode_throughput": ["--images", "128", "--rounds", "4"],
    "data_throughput": ["--images", "400", "--batches", "6", "--repeats", "2", "--batch", "32"],
    "teacher_throughput": ["--n", "128", "--batch", "32"],
    "online_padding": ["--n", "64", "--batch", "32", "--bucket", "8"],
    "extract_throughput": ["--samples", "40"],
}
"""Every benchmark script and its small-size arguments; `main` checks this names every script here."""


def scripts() -> list[str]:
    """The benchmark scripts in this folder: every .py but the helpers and gpu_check (one CUDA device)."""
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("common", "run_all", "gpu_check"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["small", "full"], default="small")
    p.add_argument("--only", default="", help="comma-separated script names (default: all)")
    a = p.parse_args(argv)
    names = scripts()
    if set(names) != set(SMALL):
        print(f"run_all.SMALL lists {sorted(SMALL)} but benchmarks/ holds {names}: add the new script's "
              "small-size arguments to SMALL", file=sys.stderr)
        return 2
    if a.only:
        wanted = a.only.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            print(f"--only {','.join(unknown)}: no such benchmark; choose from {','.join(names)}", file=sys.stderr)
            return 2
        names = [n for n in names if n in wanted]
    lines, failed = {}, []
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *(SMALL[name] if a.size == "small" else [])]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        last = None
        for line in proc.stdout:  # streamed: a slow benchmark shows its progress
            print(line, end="", flush=True)
            if line.startswith("benchmark: "):
                last = line.strip()
        rc = proc.wait()
        print(f"=== {name}: exit {rc} in {time.time() - t0:.0f} s", flush=True)
        if rc != 0 or last is None:
            failed.append(f"{name} (exit {rc}{'' if last else ', no benchmark: line'})")
        else:
            lines[name] = last
    print("\n=== summary")
    for name in names:
        print(lines.get(name, f"benchmark: {name} FAILED"))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
