"""Where this process sits in the job: rank, local rank, world size, rendezvous address.

One place maps the launchers' variables (torchrun, SLURM srun, submitit's local executor) onto
torch.distributed's. Every entry point (direct run, torchrun, `srun` from an sbatch script,
submitit on SLURM or locally) goes through `DistEnv.from_environ`, so the paths can never
disagree about ranks.
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
    """Which variables were read: 'torchrun', 'slurm', 'submitit-local' or 'none'."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """Read torchrun variables first (they win inside an srun that wraps torchrun), then SLURM
        (only inside a job step), then submitit's local executor."""
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
        # The batch script itself also sees SLURM_PROCID=0 and SLURM_NTASKS=N, but it is one
        # process, not rank 0 of N: only a step started by srun (which sets SLURM_STEP_ID) is.
        # Without this check a recipe run directly in an sbatch script waits forever for N-1 peers.
        in_step = "SLURM_STEP_ID" in env or "SLURM_STEPID" in env
        if in_step and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
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
        # submitit's LocalExecutor: N tasks on this host, sharing the controller's job id.
        if "SUBMITIT_LOCAL_GLOBALID" in env and "SUBMITIT_LOCAL_NTASKS" in env:
            return cls(
                rank=int(env["SUBMITIT_LOCAL_GLOBALID"]),
                local_rank=int(env.get("SUBMITIT_LOCAL_LOCALID", 0)),
                world_size=int(env["SUBMITIT_LOCAL_NTASKS"]),
                master_addr="127.0.0.1",
                master_port=int(env.get("MASTER_PORT") or slurm_port(env.get("SUBMITIT_LOCAL_JOB_ID", "0"))),
                launcher="submitit-local",
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
    """A port in [20000, 30000) derived from the job id, so concurrent jobs sharing a node do not
    collide (and a requeued job, which keeps its id, rendezvouses on the same port)."""
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    return 20000 + int(digits[-4:]) % 20000


_RANGE = re.compile(r"^(\d+)-(\d+)$")
_BRACKET = re.compile(r"\[([^\]]*)\]")


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM hostlist such as 'gpu[001-003,007],login1' into host names, in order.

    Same semantics as `scontrol show hostnames`, without needing the SLURM client installed:
    zero padding follows the range's lower bound, and several bracket groups in one name
    ('rack[1-2]-gpu[01-02]') expand to their cartesian product, leftmost group slowest.
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        item = item.strip()
        if item:
            hosts.extend(_expand_item(item))
    return hosts


def _expand_item(item: str) -> list[str]:
    m = _BRACKET.search(item)
    if not m:
        if "[" in item or "]" in item:
            raise ValueError(f"malformed SLURM hostlist entry {item!r}: unbalanced brackets.")
        return [item]
    prefix, rest = item[: m.start()], item[m.end():]
    tails = _expand_item(rest)
    out = []
    for part in m.group(1).split(","):
        r = _RANGE.match(part.strip())
        if r:
            lo, hi = r.groups()
            if int(hi) < int(lo):
                raise ValueError(f"malformed SLURM hostlist range {part!r} in {item!r}: end before start.")
            ids = [f"{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
        elif part.strip().isdigit():
            ids = [part.strip()]
        else:
            raise ValueError(f"malformed SLURM hostlist entry {item!r}: {part!r} is not N or N-M.")
        out.extend(f"{prefix}{i}{t}" for i in ids for t in tails)
    return out


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
