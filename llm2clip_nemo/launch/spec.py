"""Where and how big: `LaunchSpec`, the resources of one job `llm2clip-nemo launch` submits, and
submitit's time-out rule.

Time-out or preemption: submitit cannot tell them apart, it guesses from the run time of the
current attempt. A signal that arrives after `timeout_threshold_min(time_min)` =
min(80% of the limit, limit - 10 min) counts as a time-out and uses one of `max_requeues`; an
earlier one counts as a preemption and does not (submitit 1.5.4,
`core/job_environment.py: SignalHandler.has_timed_out`). With a limit of 10 min or less the
threshold is <= 0, so every preemption is counted as a time-out: `limit_warnings` says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .job import check_one_task_per_gpu

CLUSTERS = ("slurm", "local")


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
    """Extra pyxis `--container-mounts` (`src:dst[,...]`), after the job folder's parent and the working
    directory, which are always mounted at the same path (`launch.job.LaunchJob.srun_flags`)."""
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
        check_one_task_per_gpu(self.ntasks_per_node, self.gpus_per_node,
                               f"drop --tasks-per-node or set it to {self.gpus_per_node}")
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
