"""A real SLURM cluster for the tests: the one `sinfo` answers, or one started for the session.

`make test` on a fresh CI machine (root, Debian 12): the `slurm_cluster` fixture runs
.ci/slurm/setup-slurm.sh (apt-get installs slurmctld/slurmd/munge/slurmdbd/mariadb the first
time; then ~12 s to start controller, accounting and two simulated nodes n1, n2 on this host) and
stop-slurm.sh after the last test. It skips, saying why, only where it cannot start one: not root,
or not Debian.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CI_SLURM = REPO / ".ci" / "slurm"
SLURM_ROOT = "/tmp/slurm"


@dataclass(frozen=True)
class Cluster:
    nodes: list[str]
    """Names of the idle nodes (simulated nodes share this host)."""
    cpus_per_node: int
    started_here: bool
    """True when this session started the cluster (and will stop it)."""


def _run(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return _run(["sinfo", "-h"]).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _is_debian() -> bool:
    try:
        return "ID=debian" in Path("/etc/os-release").read_text()
    except OSError:
        return False


def _idle_nodes() -> tuple[list[str], int]:
    out = _run(["sinfo", "-h", "-N", "-o", "%N %c %T"]).stdout.split("\n")
    rows = [r.split() for r in out if r.strip()]
    idle = [r for r in rows if r[2].startswith("idle") or r[2].startswith("mix")]
    return [r[0] for r in idle], min((int(r[1]) for r in idle), default=0)


@pytest.fixture(scope="session")
def slurm_cluster():
    started = False
    if not _answers():
        if os.geteuid() != 0:
            pytest.skip("no SLURM cluster answers `sinfo`, and starting one (.ci/slurm/setup-slurm.sh) needs root")
        if not _is_debian():
            pytest.skip("no SLURM cluster answers `sinfo`, and .ci/slurm/setup-slurm.sh needs Debian (apt packages)")
        env = {**os.environ, "SLURM_NODES": "2", "SLURM_ACCOUNTING": "1", "SLURM_ROOT": SLURM_ROOT}
        r = subprocess.run(["bash", str(CI_SLURM / "setup-slurm.sh")], env=env, capture_output=True, text=True,
                           timeout=1200)
        if r.returncode != 0:
            pytest.fail(f"setup-slurm.sh failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        started = True
    if _run(["sacct", "-n", "-X", "-S", "now"]).returncode != 0:
        pytest.skip("the SLURM cluster has no accounting (sacct fails): submitit cannot follow jobs")
    nodes, cpus = _idle_nodes()
    if len(nodes) < 2 or cpus < 2:
        pytest.skip(f"the SLURM cluster needs 2 idle nodes with >= 2 CPUs; sinfo shows {nodes} with {cpus} CPUs")
    yield Cluster(nodes=nodes, cpus_per_node=cpus, started_here=started)
    if started:
        subprocess.run(["bash", str(CI_SLURM / "stop-slurm.sh")], env={**os.environ, "SLURM_ROOT": SLURM_ROOT},
                       capture_output=True, timeout=120)
