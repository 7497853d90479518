"""A tiny checkpointing workload for the SLURM launch tests (run by `llm2clip-nemo launch slurm_workload`).

Processes items 0..items-1 in order, on rank 0 only (other ranks return at once). Each item is
committed by appending its id to `processed.log` and rewriting `ckpt.json` with the next id,
with the preemption signals blocked so a signal can never land between the two writes. With
`resume=true` it starts from the checkpoint; without it, from 0 (so a requeue that forgot the
resume argument shows up as repeated ids). `fail_at=K` raises on item K. No torch import: the
test measures the launcher, not the ML stack.

    out=DIR items=N [sleep=SECONDS] [resume=true] [fail_at=K] [exit=CODE]
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

_PREEMPT = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM}


@contextlib.contextmanager
def _signals_blocked():
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _PREEMPT)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending signal is delivered here


def main(argv: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv)
    if "exit" in opts:
        raise SystemExit(int(opts["exit"]))
    out, items = Path(opts["out"]), int(opts["items"])
    delay, fail_at = float(opts.get("sleep", "0.2")), int(opts.get("fail_at", "-1"))
    if int(os.environ.get("SLURM_PROCID", "0")) != 0:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    ckpt, log = out / "ckpt.json", out / "processed.log"
    start = json.loads(ckpt.read_text())["next"] if opts.get("resume") == "true" and ckpt.exists() else 0
    with open(out / "attempts.log", "a") as f:
        f.write(f"start={start} restart={os.environ.get('SLURM_RESTART_COUNT', '0')} argv={' '.join(argv)}\n")
    # `scontrol requeue` (what SLURM's PreemptMode=REQUEUE does) sends SIGTERM, then SIGKILL after
    # KillWait: stop committing at SIGTERM so the kill can never land between the two writes.
    stopping = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        for i in range(start, items):
            while stopping:
                time.sleep(1)  # wait for the kill
            if i == fail_at:
                raise RuntimeError(f"item {i} is corrupt (fail_at={fail_at})")
            time.sleep(delay)  # the work
            with _signals_blocked():
                with open(log, "a") as f:
                    f.write(f"{i}\n")
                    f.flush()
                    os.fsync(f.fileno())
                tmp = ckpt.with_suffix(".tmp")
                tmp.write_text(json.dumps({"next": i + 1}))
                os.replace(tmp, ckpt)
    finally:
        signal.signal(signal.SIGTERM, previous)  # in-process callers (tests) get theirs back
    return 0
