"""`python -m llm2clip_nemo.launch.describe VERB CONFIG [ARGS...]`: the srun line of an sbatch script.

`slurm/common.sh` runs it inside the allocation and `eval`s what it prints, a bash array

    cmd=(srun --kill-on-bad-exit=1 python3 -m llm2clip_nemo.cli pretrain --config-name pretrain_large ...)

so the scripts restate none of the rules `llm2clip-nemo launch` follows: both build their job from
`launch.job.LaunchJob`. CONFIG is the script's `--config-name` ('' for none); ARGS are the script's
arguments (config overrides). The allocation's shape and the attempt come from SLURM's variables:

    SLURM_JOB_NUM_NODES                          nodes (default 1)
    SLURM_NTASKS_PER_NODE, SLURM_TASKS_PER_NODE  tasks per node ('8(x4)' reads 8; default 1)
    SLURM_GPUS_PER_NODE                          GPUs per node ('8' or 'h100:8'; unset: not checked)
    SLURM_RESTART_COUNT                          > 0: a requeued attempt, which appends the resume override
    SLURM_SUBMIT_DIR                             the container's working directory (default: this one)
and the user's: LLM2CLIP_PYTHON (the tasks' interpreter, default python3), CONTAINER_IMAGE and
CONTAINER_MOUNTS (pyxis). A job that cannot run as asked: one line on stderr, exit status 2,
nothing on stdout. Standard library only (a bare python3 on the batch host runs it).
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping

from ..verbs import VERBS
from .job import LaunchError, LaunchJob


def tasks_per_node(environ: Mapping[str, str]) -> int:
    """Tasks per node of the allocation: SLURM_NTASKS_PER_NODE, else SLURM_TASKS_PER_NODE ('8(x4)' -> 8).
    LaunchError when nodes run different counts ('4,2': Lightning needs one count on every node)."""
    value = environ.get("SLURM_NTASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE") or "1"
    counts = {re.sub(r"\(x\d+\)$", "", part) for part in value.split(",")}
    if len(counts) != 1 or not next(iter(counts)).isdigit():
        raise LaunchError(f"SLURM_TASKS_PER_NODE={value}: every node must run the same number of tasks; submit "
                          "with 'sbatch --ntasks-per-node=N ...'.")
    return int(counts.pop())


def gpus_per_node(environ: Mapping[str, str]) -> int:
    """SLURM_GPUS_PER_NODE ('8', 'h100:8') as a count; 0 when unset or not a single count."""
    last = environ.get("SLURM_GPUS_PER_NODE", "").rsplit(":", 1)[-1]
    return int(last) if last.isdigit() else 0


def describe(verb: str, config: str, args: list[str], environ: Mapping[str, str], cwd: str) -> list[str]:
    """The srun command line of the sbatch script's step (see the module docstring)."""
    if verb not in VERBS:
        raise LaunchError(f"VERB={verb!r} is not a verb: set one of {', '.join(sorted(VERBS))} in the script.")
    job = LaunchJob(verb, nodes=int(environ.get("SLURM_JOB_NUM_NODES") or 1), tasks_per_node=tasks_per_node(environ),
                    gpus_per_node=gpus_per_node(environ), config=config or None,
                    container_image=environ.get("CONTAINER_IMAGE") or None,
                    shared_dirs=(environ.get("SLURM_SUBMIT_DIR") or cwd,),
                    container_mounts=environ.get("CONTAINER_MOUNTS") or None, launcher="sbatch")
    return job.srun_command(environ.get("LLM2CLIP_PYTHON") or "python3", args,
                            int(environ.get("SLURM_RESTART_COUNT") or 0))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m llm2clip_nemo.launch.describe VERB CONFIG [ARGS...]  (CONFIG '' for none)",
              file=sys.stderr)
        return 2
    try:
        cmd = describe(argv[0], argv[1], argv[2:], os.environ, os.getcwd())
    except LaunchError as e:
        print(f"llm2clip: {e}", file=sys.stderr)
        return 2
    print("cmd=(" + " ".join(shlex.quote(a) for a in cmd) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
