"""What every task of a launched job runs: `RecipeJob`, a verb's `main(argv)` in-process.

torch.distributed ranks come from SLURM's variables through `runtime.DistEnv`, exactly as under
`srun` from an sbatch script. On preemption or time-out SLURM sends the signal submitit listens for
(`--signal=USR2@signal_delay_s`); rank 0 calls `RecipeJob.checkpoint()`, which returns the same job
with the verb's resume override set (`launch.job.with_resume`), and submitit requeues it: the next
attempt resumes from the last checkpoint the recipe wrote.

Imports stay light (no torch): this module is unpickled in every task before the verb runs.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import submitit

from ..verbs import VERBS, run
from .job import with_resume

# submitit's SignalHandler ends a preempted/timed-out task with sys.exit(-1) after requeueing it.
_SUBMITIT_PREEMPT_EXIT = -1


def resolve_target(target: str) -> str:
    """Check that `target` is a CLI verb or an importable module with `main(argv)`; return it."""
    if target in VERBS:
        return target
    try:
        if importlib.util.find_spec(target) is not None:
            return target
    except (ImportError, ValueError):  # a dotted name whose parent package does not exist
        pass
    raise ValueError(
        f"unknown launch target {target!r}: give a verb ({', '.join(sorted(VERBS))}) or an importable "
        "module whose main(argv) returns an exit status (e.g. mypkg.my_job), importable here and on the nodes."
    )


class RecipeJob(submitit.helpers.Checkpointable):
    """What every task of a launched job runs: `llm2clip-nemo <verb> argv` (or `module.main(argv)`)."""

    def __init__(self, target: str, argv: Sequence[str], resume_args: Sequence[str] = ()):
        self.target = target
        self.argv = list(argv)
        self.resume_args = list(resume_args)

    def attempt_argv(self, environ: Mapping[str, str]) -> list[str]:
        """The arguments of this attempt. SLURM may requeue the job itself (PreemptMode=REQUEUE, node
        failure, `scontrol requeue`) without the signal that makes submitit call checkpoint(): it then
        re-runs the original submission, so a restarted attempt (SLURM_RESTART_COUNT > 0) sets the
        resume override either way, as the sbatch scripts do."""
        if int(environ.get("SLURM_RESTART_COUNT") or 0) > 0:
            return with_resume(self.argv, self.resume_args)
        return list(self.argv)

    def __call__(self) -> int:
        argv = self.attempt_argv(os.environ)
        try:
            if self.target in VERBS:
                rc = run(self.target, argv)
            else:
                rc = importlib.import_module(self.target).main(argv)
        except SystemExit as e:
            if e.code == _SUBMITIT_PREEMPT_EXIT:
                raise  # submitit's signal handler: requeued; this attempt must end without a result
            # argparse and friends exit instead of returning: make it a status the caller sees
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        rc = int(rc or 0)
        if rc != 0:  # an exception reaches the caller with its traceback; a bare status must too
            raise RuntimeError(f"{self.target} exited with status {rc} (argv: {shlex.join(argv)})")
        return rc

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called on rank 0 when the preemption/time-out signal arrives: the job to requeue."""
        resumed = RecipeJob(self.target, with_resume(self.argv, self.resume_args), self.resume_args)
        return submitit.helpers.DelayedSubmission(resumed, *args, **kwargs)

    def __repr__(self) -> str:
        return f"RecipeJob({self.target!r}, {self.argv!r}, resume_args={self.resume_args!r})"
