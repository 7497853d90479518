"""Submit any verb to SLURM (or this machine) through submitit, with requeue-and-resume.

    spec = LaunchSpec(cluster="slurm", nodes=2, gpus_per_node=8, time_min=240)
    job, folder = submit("pretrain", ["--config-name", "pretrain_large"], spec)
    outcome = wait(job)           # JobOutcome(returncode, state, message, ...)

The job's rules (trainer pins, resume override, srun flags) come from `launch.job.LaunchJob`, the
description the sbatch scripts use too; its resources from `launch.spec.LaunchSpec`; each task runs
`launch.task.RecipeJob`. submitit's batch script sources `slurm/env.sh` like the sbatch scripts, and
asks for `--signal=USR2@signal_delay_s` and `--requeue` (time-out vs preemption: `launch.spec`).
"""
from __future__ import annotations

import dataclasses
import datetime
import shlex
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core import utils as submitit_utils
from submitit.slurm.slurm import SlurmExecutor, SlurmJob

from .job import LaunchJob, srun_flags
from .spec import LaunchSpec
from .task import RecipeJob, resolve_target

# sacct states in which a job may still produce results (a requeued job passes through these).
_NOT_DONE = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED", "RESIZING",
             "SUSPENDED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "STAGE_OUT", "SIGNALING"}

REPO_SLURM_DIR = Path(__file__).resolve().parents[2] / "slurm"


def new_job_folder(spec: LaunchSpec, now: datetime.datetime | None = None) -> Path:
    """A fresh, timestamped folder per run: SLURM job ids restart on a new cluster state, so reusing a
    folder could mix an old run's results into a new one."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = Path(spec.folder).expanduser().absolute() / f"{spec.job_name}-{stamp}"
    folder, n = base, 1
    while folder.exists():
        folder, n = base.with_name(f"{base.name}-{n}"), n + 1
    return folder


def shared_dirs(folder: Path) -> tuple[str, str]:
    """What every task must see at the same path: the job folder's parent (submitit's pickles, logs and
    results) and the working directory (the tasks' code and relative paths), in this order."""
    return str(Path(folder).parent), str(Path.cwd())


def launch_job(target: str, spec: LaunchSpec, folder: Path, config_name: str | None = None) -> LaunchJob:
    """The launch description of `target` on `spec`'s allocation (the sbatch scripts build theirs in
    `launch.describe`)."""
    return LaunchJob(target, nodes=spec.nodes, tasks_per_node=spec.ntasks_per_node, gpus_per_node=spec.gpus_per_node,
                     config=config_name, container_image=spec.container_image, shared_dirs=shared_dirs(folder),
                     container_mounts=spec.container_mounts, launcher="launch")


def slurm_parameters(spec: LaunchSpec, folder: Path) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch names) for `spec`; srun flags from `launch.job.srun_flags`."""
    setup = []
    if (REPO_SLURM_DIR / "env.sh").is_file():  # the same NCCL/OMP settings the sbatch scripts use
        setup.append(f"source {shlex.quote(str(REPO_SLURM_DIR / 'env.sh'))}")
    setup += spec.setup
    params: dict[str, Any] = {
        "job_name": spec.job_name,
        "nodes": spec.nodes,
        "ntasks_per_node": spec.ntasks_per_node,
        "time": spec.time_min,
        "signal_delay_s": spec.signal_delay_s,
        "setup": setup,
        "srun_args": srun_flags(spec.container_image, shared_dirs(folder), spec.container_mounts),
        "additional_parameters": {"requeue": True},
    }
    optional = {"gpus_per_node": spec.gpus_per_node or None, "cpus_per_task": spec.cpus_per_task,
                "partition": spec.partition, "mem": spec.mem, "account": spec.account, "qos": spec.qos}
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def _python(spec: LaunchSpec) -> str | None:
    if spec.python:
        return spec.python
    return "python3" if spec.container_image else None


class _SbatchRenderer(SlurmExecutor):
    """SlurmExecutor that only renders: works where `srun` is absent (a laptop preparing a job)."""

    @classmethod
    def affinity(cls) -> int:
        return 2


def render_sbatch(spec: LaunchSpec, folder: Path) -> str:
    """The exact sbatch script submitit writes for `spec` (what `--dry-run` prints)."""
    spec.validate()
    ex = _SbatchRenderer(folder, max_num_timeout=spec.max_requeues, python=_python(spec))
    ex.update_parameters(**slurm_parameters(spec, Path(folder)))
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")


def make_executor(spec: LaunchSpec, folder: Path) -> submitit.core.core.PicklingExecutor:
    spec.validate()
    if spec.cluster == "local":
        ex = submitit.LocalExecutor(folder, max_num_timeout=spec.max_requeues, python=_python(spec))
        ex.update_parameters(timeout_min=spec.time_min, tasks_per_node=spec.ntasks_per_node,
                             gpus_per_node=spec.gpus_per_node, signal_delay_s=spec.signal_delay_s,
                             setup=spec.setup)
        return ex
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ValueError("cluster=slurm needs the SLURM client (sbatch, srun) on PATH: run this on a login node, "
                         "or use --cluster local, or --dry-run to see the script.")
    ex = SlurmExecutor(folder, max_num_timeout=spec.max_requeues, python=_python(spec))
    ex.update_parameters(**slurm_parameters(spec, Path(folder)))
    return ex


def recipe_job(target: str, argv: Sequence[str], spec: LaunchSpec, folder: Path,
               resume_args: Sequence[str] | None = None, config_name: str | None = None) -> RecipeJob:
    """The task of `target` on `spec`: `[--config-name config_name]`, the trainer pins, then `argv`; on a
    restart the verb's resume override (or `resume_args`). ValueError for an unknown target or an argument
    that contradicts the allocation (`launch.job.LaunchJob.verb_args`)."""
    job = launch_job(resolve_target(target), spec, folder, config_name)
    resume = job.resume_args if resume_args is None else list(resume_args)
    return RecipeJob(target, job.verb_args(argv), resume)


def submit(target: str, argv: Sequence[str], spec: LaunchSpec, resume_args: Sequence[str] | None = None,
           config_name: str | None = None) -> tuple[submitit.Job, Path]:
    """Submit `target` (a verb or a module with main(argv)) with `argv`; return (job, job folder).
    `config_name`: the recipe's config, placed before the pins as the sbatch scripts do (None: `argv`
    names it, if at all; the recipe reads `--config-name` wherever it stands)."""
    folder = new_job_folder(spec)
    task = recipe_job(target, argv, spec, folder, resume_args, config_name)
    job = make_executor(spec, folder).submit(task)
    return job, folder


@dataclass
class JobOutcome:
    """How a job ended, as the caller sees it."""

    job_id: str
    state: str
    """SLURM state from sacct ('COMPLETED', 'FAILED', ...) or 'FINISHED' for local jobs."""
    returncode: int
    """0 when every task returned successfully, 1 otherwise."""
    message: str
    """'' on success; else the last line of the first failing task's traceback (or why there is none)."""
    results: list[Any] = dataclasses.field(default_factory=list)
    """Per task: the verb's return value, or None when the task failed or left no result."""


def last_traceback_line(trace: str) -> str:
    lines = [ln for ln in trace.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _task_paths(job: submitit.Job, task: int) -> submitit_utils.JobPaths:
    return submitit_utils.JobPaths(job.paths.folder, job_id=job.job_id, task_id=task)


def wait(job: submitit.Job, poll_s: float = 2.0, timeout_s: float | None = None) -> JobOutcome:
    """Block until `job` is over (through requeues); report per-task results and the first error."""
    start = time.monotonic()
    results = [_task_paths(job, t).result_pickle for t in range(job.num_tasks)]
    state = "UNKNOWN"
    while True:
        if all(p.exists() for p in results):
            break
        if isinstance(job, SlurmJob):
            # poll sacct ourselves: submitit's shared watcher backs off to minutes between calls
            state = job.watcher.get_state(job.job_id, mode="force")
            finished = state.split()[0].upper() not in _NOT_DONE
        else:
            finished = job.done()
            state = "FINISHED" if finished else "RUNNING"
        if finished:
            grace = time.monotonic() + 5  # result files may land just after the state flips
            while time.monotonic() < grace and not all(p.exists() for p in results):
                time.sleep(0.5)
            break
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"job {job.job_id} still {state} after {timeout_s:.0f} s (folder {job.paths.folder})")
        time.sleep(poll_s)
    if isinstance(job, SlurmJob) and state in ("UNKNOWN", "RUNNING", "COMPLETING"):
        state = job.watcher.get_state(job.job_id, mode="force")
    values, message = [], ""
    for t, path in enumerate(results):
        if not path.exists():
            values.append(None)
            if not message:
                err = _task_paths(job, t).stderr
                tail = last_traceback_line(err.read_text(errors="replace")) if err.exists() else ""
                message = f"task {t} left no result (job state {state})" + (f"; stderr ends: {tail}" if tail else "")
            continue
        outcome, value = submitit_utils.pickle_load(path)
        if outcome == "success":
            values.append(value)
        else:
            values.append(None)
            if not message or message.startswith("task "):
                message = last_traceback_line(value)
    rc = 0 if all(p.exists() for p in results) and not message else 1
    return JobOutcome(job_id=str(job.job_id), state=state, returncode=rc, message=message, results=values)
