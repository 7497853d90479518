"""Where this process sits in the job: rank, local rank, world size, rendezvous address.

One place maps the launchers' variables (torchrun, SLURM srun) onto torch.distributed's. Every
entry point (direct run, torchrun, `srun` from an sbatch script, submitit) goes through
`DistEnv.from_environ`, so the two SLURM paths can never disagree about ranks.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_PORT_BASE = 29500


@dataclass(frozen=True)
class DistEnv:
    """Coordinates of this process in a (possibly single-process) job."""

    rank: int = 0
    """Global rank, 0..world_size-1."""
    local_rank: int = 0
    """Rank on this node; selects the GPU."""
    world_size: int = 1
    """Number of processes in the job."""
    master_addr: str = "127.0.0.1"
    """Host of rank 0 (the rendezvous host)."""
    master_port: int = DEFAULT_PORT_BASE
    """TCP port of the rendezvous store on master_addr."""
    launcher: str = "none"
    """Which variables were read: 'torchrun', 'slurm' or 'none'."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """Read torchrun variables first (they win inside an srun that wraps torchrun), then SLURM."""
        env = os.environ if environ is None else environ
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(
                rank=int(env["RANK"]),
                local_rank=int(env.get("LOCAL_RANK", 0)),
                world_size=int(env["WORLD_SIZE"]),
                master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                master_port=int(env.get("MASTER_PORT", DEFAULT_PORT_BASE)),
                launcher="torchrun",
            )
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
            hosts = expand_nodelist(nodelist)
            return cls(
                rank=int(env["SLURM_PROCID"]),
                local_rank=int(env.get("SLURM_LOCALID", 0)),
                world_size=int(env["SLURM_NTASKS"]),
                master_addr=env.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1"),
                master_port=int(env.get("MASTER_PORT") or slurm_port(env.get("SLURM_JOB_ID", "0"))),
                launcher="slurm",
            )
        return cls()

    def torch_environ(self) -> dict[str, str]:
        """The variables torch.distributed's env:// rendezvous reads."""
        return {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def slurm_port(job_id: str) -> int:
    """A port derived from the job id, so concurrent jobs sharing a node do not collide
    (and a requeued job, which keeps its id, rendezvouses on the same port)."""
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    return 20000 + int(digits[-4:]) % 20000


_RANGE = re.compile(r"^(\d+)-(\d+)$")


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM hostlist such as 'gpu[001-003,007],login1' into host names, in order.

    Same semantics as `scontrol show hostnames`, without needing the SLURM client installed.
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        m = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", item)
        if not m:
            if item:
                hosts.append(item)
            continue
        prefix, body, suffix = m.groups()
        for part in body.split(","):
            r = _RANGE.match(part)
            if r:
                lo, hi = r.groups()
                width = len(lo)
                hosts.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
            else:
                hosts.append(f"{prefix}{part}{suffix}")
    return hosts


def _split_top_level(s: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    out, depth, cur = [], 0, []
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out
