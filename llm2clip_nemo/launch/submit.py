"""Submit any verb to SLURM (or this machine) through submitit, with requeue-and-resume.

    spec = LaunchSpec(cluster="slurm", nodes=2, gpus_per_node=8, time_min=240)
    job, folder = submit("pretrain", ["--config-name", "pretrain_large"], spec)
    outcome = wait(job)           # JobOutcome(returncode, state, message, ...)

Every task of the job runs `RecipeJob`: the verb's `main(argv)` in-process; torch.distributed
ranks come from SLURM's variables through `runtime.DistEnv`, exactly as under `srun` from an
sbatch script. On preemption or time-out SLURM sends the signal submitit listens for
(`--signal=USR2@signal_delay_s`); rank 0 calls `RecipeJob.checkpoint()`, which returns the same
job with the verb's resume override appended (`exp_manager.resume_if_exists=true`), and submitit
requeues it: the next attempt resumes from the last checkpoint the recipe wrote.

Time-out or preemption: submitit cannot tell them apart, it guesses from the run time of the
current attempt. A signal that arrives after `timeout_threshold_min(time_min)` =
min(80% of the limit, limit - 10 min) counts as a time-out and uses one of `max_requeues`; an
earlier one counts as a preemption and does not (submitit 1.5.4,
`core/job_environment.py: SignalHandler.has_timed_out`). With a limit of 10 min or less the
threshold is <= 0, so every preemption is counted as a time-out: `limit_warnings` says so.

Imports stay light (no torch): this module is unpickled in every task before the verb runs.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib
import importlib.util
import os
import shlex
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.core import utils as submitit_utils
from submitit.slurm.slurm import SlurmExecutor, SlurmJob

CLUSTERS = ("slurm", "local")

# The override each verb needs to pick up where a requeued attempt left off. Verbs not listed are
# re-run as they were (doctor, evaluate: idempotent).
RESUME_ARGS: dict[str, list[str]] = {
    "pretrain": ["exp_manager.resume_if_exists=true"],
    "finetune": ["exp_manager.resume_if_exists=true"],
    "caption-contrastive": ["exp_manager.resume_if_exists=true"],
}

# Verbs that build a Lightning trainer: it checks devices * num_nodes against SLURM's task count, so
# the launcher states the allocation (before the user's arguments, which may still override it).
TRAINER_VERBS = ("pretrain", "finetune", "caption-contrastive")

# sacct states in which a job may still produce results (a requeued job passes through these).
_NOT_DONE = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED", "RESIZING",
             "SUSPENDED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "STAGE_OUT", "SIGNALING"}

# submitit's SignalHandler ends a preempted/timed-out task with sys.exit(-1) after requeueing it.
_SUBMITIT_PREEMPT_EXIT = -1

REPO_SLURM_DIR = Path(__file__).resolve().parents[2] / "slurm"


@dataclass
class LaunchSpec:
    """Where and how big: the resources of one launched job."""

    cluster: str = "slurm"
    """'slurm' (sbatch through submitit) or 'local' (submitit's LocalExecutor: tasks on this machine)."""
    nodes: int = 1
    """Number of nodes (local: must be 1)."""
    gpus_per_node: int = 0
    """GPUs per node; 0 for CPU jobs (gloo)."""
    tasks_per_node: int | None = None
    """Processes per node; default one per GPU (or 1 without GPUs)."""
    cpus_per_task: int | None = None
    """CPU cores per process (data loader workers + the main thread); sets OMP_NUM_THREADS too."""
    partition: str | None = None
    """SLURM partition; None: the cluster's default."""
    time_min: int = 60
    """Time limit in minutes. A signal after min(80% of it, it - 10 min) of an attempt's run time counts
    as a time-out (bounded by max_requeues), an earlier one as a preemption (`timeout_threshold_min`)."""
    mem: str | None = None
    """Memory per node in SLURM syntax ('64G', '500000M', '0' = all of it); None: cluster default."""
    account: str | None = None
    """SLURM account to charge."""
    qos: str | None = None
    """SLURM quality of service."""
    job_name: str = "llm2clip"
    """SLURM job name; also the prefix of the job folder."""
    folder: str = "runs/launch"
    """Parent of the per-run job folders (must be visible from every node)."""
    signal_delay_s: int = 90
    """Seconds before the time limit at which the preemption/time-out signal arrives (time to checkpoint)."""
    max_requeues: int = 3
    """How many time-outs may requeue the job. Preemptions do not count, but submitit calls a signal a
    time-out once the attempt has run `timeout_threshold_min(time_min)`: with time_min <= 10 that is
    every signal, so each preemption uses one."""
    container_image: str | None = None
    """pyxis/enroot image for srun (`--container-image`); None runs on the host."""
    container_mounts: str | None = None
    """pyxis `--container-mounts` (default: the job folder's parent mounted at the same path)."""
    python: str | None = None
    """Interpreter the tasks run; default this interpreter (or `python3` inside a container)."""
    setup: list[str] = field(default_factory=list)
    """Extra shell lines run in the batch script before srun (module loads, exports)."""

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def num_tasks(self) -> int:
        return self.nodes * self.ntasks_per_node

    def validate(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ValueError(f"cluster={self.cluster!r}: choose one of {', '.join(CLUSTERS)}.")
        for name in ("nodes", "time_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise ValueError(f"tasks_per_node={self.tasks_per_node} must be >= 1.")
        if self.gpus_per_node and self.tasks_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ValueError(
                f"tasks_per_node={self.tasks_per_node} with gpus_per_node={self.gpus_per_node}: run one task "
                f"per GPU (drop --tasks-per-node or set it to {self.gpus_per_node})."
            )
        if self.cluster == "local" and self.nodes != 1:
            raise ValueError(f"nodes={self.nodes} with cluster=local: a local run has one node; use --cluster slurm.")


# submitit 1.5.4 `SignalHandler.has_timed_out`: guaranteed walltime = min(0.8 * limit, limit - 10 min).
SUBMITIT_TIMEOUT_FRACTION = 0.8
SUBMITIT_TIMEOUT_MARGIN_MIN = 10


def timeout_threshold_min(time_min: float) -> float:
    """Minutes an attempt must have run for submitit to call a SLURM signal a time-out, not a preemption.

    min(0.8 * time_min, time_min - 10), from submitit 1.5.4 `SignalHandler.has_timed_out` (the run
    time is counted from the start of the current attempt's process). Examples: 60 -> 48,
    50 -> 40, 20 -> 10, 10 -> 0 (every signal is a time-out).
    """
    return min(SUBMITIT_TIMEOUT_FRACTION * time_min, time_min - SUBMITIT_TIMEOUT_MARGIN_MIN)


def limit_warnings(spec: LaunchSpec) -> list[str]:
    """One-line warnings about `spec`'s time limit and submitit's time-out rule ([] when none apply)."""
    if timeout_threshold_min(spec.time_min) > 0:
        return []
    return [f"--time {spec.time_min} min: submitit counts a signal as a time-out once an attempt has run "
            f"min(80% of the limit, limit - {SUBMITIT_TIMEOUT_MARGIN_MIN} min) = "
            f"{timeout_threshold_min(spec.time_min):g} min, so every preemption uses one of the "
            f"{spec.max_requeues} requeues (--max-requeues); give --time > {SUBMITIT_TIMEOUT_MARGIN_MIN} "
            "min or raise --max-requeues."]


def resolve_target(target: str) -> str:
    """Check that `target` is a CLI verb or an importable module with `main(argv)`; return it."""
    from ..cli import VERBS

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


def with_resume(argv: Sequence[str], resume_args: Sequence[str]) -> list[str]:
    """`argv` with each `key=value` of `resume_args` set (replacing an earlier value of the key)."""
    keys = {a.split("=", 1)[0] for a in resume_args}
    kept = [a for a in argv if not ("=" in a and not a.startswith("-") and a.split("=", 1)[0] in keys)]
    return kept + list(resume_args)


class RecipeJob(submitit.helpers.Checkpointable):
    """What every task of a launched job runs: `llm2clip-nemo <verb> argv` (or `module.main(argv)`)."""

    def __init__(self, target: str, argv: Sequence[str], resume_args: Sequence[str] = ()):
        self.target = target
        self.argv = list(argv)
        self.resume_args = list(resume_args)

    def __call__(self) -> int:
        from ..cli import VERBS
        from ..cli import main as cli_main

        argv = list(self.argv)
        # SLURM may requeue the job itself (PreemptMode=REQUEUE, node failure, `scontrol requeue`)
        # without the signal that makes submitit call checkpoint(): it then re-runs the original
        # submission. A restarted attempt resumes either way.
        if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
            argv = with_resume(argv, self.resume_args)
        try:
            if self.target in VERBS:
                rc = cli_main([self.target, *argv])
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


def new_job_folder(spec: LaunchSpec, now: datetime.datetime | None = None) -> Path:
    """A fresh, timestamped folder per run: SLURM job ids restart on a new cluster state, so reusing a
    folder could mix an old run's results into a new one."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = Path(spec.folder).expanduser().absolute() / f"{spec.job_name}-{stamp}"
    folder, n = base, 1
    while folder.exists():
        folder, n = base.with_name(f"{base.name}-{n}"), n + 1
    return folder


def slurm_parameters(spec: LaunchSpec, folder: Path) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch names) for `spec`."""
    setup = []
    if (REPO_SLURM_DIR / "env.sh").is_file():  # the same NCCL/OMP settings the sbatch scripts use
        setup.append(f"source {shlex.quote(str(REPO_SLURM_DIR / 'env.sh'))}")
    setup += spec.setup
    srun_args = ["--kill-on-bad-exit=1"]  # one failed rank ends the step instead of hanging its peers
    if spec.container_image:
        mounts = spec.container_mounts or f"{folder.parent}:{folder.parent}"
        srun_args += [f"--container-image={spec.container_image}", f"--container-mounts={mounts}",
                      "--container-workdir=" + str(Path.cwd())]
    params: dict[str, Any] = {
        "job_name": spec.job_name,
        "nodes": spec.nodes,
        "ntasks_per_node": spec.ntasks_per_node,
        "time": spec.time_min,
        "signal_delay_s": spec.signal_delay_s,
        "setup": setup,
        "srun_args": srun_args,
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


def trainer_args(target: str, spec: LaunchSpec) -> list[str]:
    """`trainer.num_nodes=N trainer.devices=T` for verbs with a trainer, from the job's shape."""
    if target not in TRAINER_VERBS:
        return []
    return [f"trainer.num_nodes={spec.nodes}", f"trainer.devices={spec.ntasks_per_node}"]


def submit(target: str, argv: Sequence[str], spec: LaunchSpec,
           resume_args: Sequence[str] | None = None) -> tuple[submitit.Job, Path]:
    """Submit `target` (a verb or a module with main(argv)) with `argv`; return (job, job folder)."""
    target = resolve_target(target)
    resume = RESUME_ARGS.get(target, []) if resume_args is None else list(resume_args)
    argv = trainer_args(target, spec) + list(argv)
    folder = new_job_folder(spec)
    ex = make_executor(spec, folder)
    job = ex.submit(RecipeJob(target, argv, resume))
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
