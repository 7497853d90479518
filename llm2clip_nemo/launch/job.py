"""One launch description: what every task of a job of VERB on NODES x TASKS runs, for both launchers.

`llm2clip-nemo launch` (submitit: `launch.submit`) and the sbatch scripts (`slurm/common.sh`, through
`python -m llm2clip_nemo.launch.describe`) take their rules from here:
  * the resume override a restarted attempt appends (`RESUME_ARGS`, `with_resume`);
  * the trainer pins: for verbs that build a Lightning trainer, `trainer.num_nodes` and
    `trainer.devices` set to the allocation (Lightning checks devices * num_nodes == tasks; a
    wrong value would otherwise surface as a rendezvous hang), a contradicting value among the
    caller's arguments refused with the launcher flag that changes the allocation;
  * one task per GPU;
  * the srun flags: `--kill-on-bad-exit=1` and the pyxis container flags;
  * the order of a task's arguments: `[--config-name CONFIG]` (an sbatch script's own config), the
    pins, the caller's arguments, and on a restarted attempt the resume override.

    job = LaunchJob("pretrain", nodes=2, tasks_per_node=4, gpus_per_node=4, config="pretrain_large")
    job.trainer_pins          # ['trainer.num_nodes=2', 'trainer.devices=4']
    job.attempt_args(["model.optim.lr=5e-4"], restart_count=1)
    # ['--config-name', 'pretrain_large', 'trainer.num_nodes=2', 'trainer.devices=4',
    #  'model.optim.lr=5e-4', 'exp_manager.resume_if_exists=true']

Standard library only: `launch.describe` runs it with a bare `python3` on the batch host.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

# The override each verb needs to pick up where a restarted attempt left off. Verbs not listed are
# re-run as they were (doctor, evaluate: idempotent; extract skips shards whose sidecars are complete).
RESUME_ARGS: dict[str, tuple[str, ...]] = {
    "pretrain": ("exp_manager.resume_if_exists=true",),
    "finetune": ("exp_manager.resume_if_exists=true",),
    "caption-contrastive": ("exp_manager.resume_if_exists=true",),
}

# Verbs that build a Lightning trainer: the config keys that must equal the allocation's shape.
TRAINER_VERBS = ("pretrain", "finetune", "caption-contrastive")
NODES_KEY, DEVICES_KEY = "trainer.num_nodes", "trainer.devices"

# How the user of each launcher changes the allocation: named in the error that refuses a contradicting pin.
RESIZE_HINTS: dict[str, dict[str, str]] = {
    "sbatch": {"nodes": "sbatch --nodes={}", "tasks": "sbatch --ntasks-per-node={}"},
    "launch": {"nodes": "llm2clip-nemo launch --nodes {}", "tasks": "llm2clip-nemo launch --tasks-per-node {}",
               "gpus": "llm2clip-nemo launch --gpus-per-node {}"},
}


class LaunchError(ValueError):
    """A job description that cannot run as asked; the message names the value and the fix (exit 2)."""


def with_resume(argv: Sequence[str], resume_args: Sequence[str]) -> list[str]:
    """`argv` with each `key=value` of `resume_args` set (replacing an earlier value of the key), at the end."""
    keys = {a.split("=", 1)[0] for a in resume_args}
    kept = [a for a in argv if not ("=" in a and not a.startswith("-") and a.split("=", 1)[0] in keys)]
    return kept + list(resume_args)


def check_one_task_per_gpu(tasks_per_node: int, gpus_per_node: int, fix: str) -> None:
    """LaunchError unless a GPU job runs exactly one task per GPU (`fix`: how to get there)."""
    if gpus_per_node and tasks_per_node != gpus_per_node:
        raise LaunchError(f"tasks_per_node={tasks_per_node} with gpus_per_node={gpus_per_node}: run one task "
                          f"per GPU ({fix}).")


def _outermost(dirs: Sequence[str]) -> list[str]:
    """`dirs` in order without repeats and without those inside another of them (mounted with it)."""
    paths = [PurePath(d) for d in dirs]
    kept: list[str] = []
    for i, p in enumerate(paths):
        inside = any(q != p and q in p.parents for q in paths) or p in paths[:i]
        if not inside:
            kept.append(str(p))
    return kept


def srun_flags(container_image: str | None = None, shared_dirs: Sequence[str] = (),
               container_mounts: str | None = None) -> list[str]:
    """srun options of a job's step: one failed rank ends it (its peers would otherwise block in a
    collective until the time limit); in a container, the last of `shared_dirs` is the working
    directory and each of them is mounted at the same path (those inside another left out), then
    `container_mounts`."""
    flags = ["--kill-on-bad-exit=1"]
    if container_image:
        if not shared_dirs:
            raise LaunchError("a container job needs its working directory (shared_dirs) to mount it.")
        mounts = [f"{d}:{d}" for d in _outermost(shared_dirs)] + ([container_mounts] if container_mounts else [])
        flags += [f"--container-image={container_image}", f"--container-workdir={shared_dirs[-1]}",
                  f"--container-mounts={','.join(mounts)}"]
    return flags


@dataclass(frozen=True)
class LaunchJob:
    """What every task of a job runs, given the verb and the allocation's shape."""

    verb: str
    """`llm2clip-nemo` verb the tasks run (or a module path with `main(argv)`)."""
    nodes: int
    """Nodes of the allocation."""
    tasks_per_node: int
    """Processes per node (one per GPU for GPU jobs)."""
    gpus_per_node: int = 0
    """GPUs per node; 0 for CPU jobs."""
    config: str | None = None
    """`--config-name` the launcher adds before the pins (an sbatch script's recipe); None: the caller's
    arguments carry it, if any."""
    container_image: str | None = None
    """pyxis/enroot image each task runs in; None: on the host."""
    shared_dirs: tuple[str, ...] = ()
    """Directories every task must see at the same path; the last is the working directory (`srun_flags`)."""
    container_mounts: str | None = None
    """Extra pyxis mounts (`src:dst[,src:dst]`), after the shared directories."""
    launcher: str = "sbatch"
    """'sbatch' or 'launch': whose flags the errors name (`RESIZE_HINTS`)."""

    def validate(self) -> None:
        """LaunchError for a shape no task can run with."""
        if self.launcher not in RESIZE_HINTS:
            raise LaunchError(f"launcher={self.launcher!r}: choose one of {', '.join(RESIZE_HINTS)}.")
        for name in ("nodes", "tasks_per_node"):
            if getattr(self, name) < 1:
                raise LaunchError(f"{name}={getattr(self, name)} must be >= 1.")
        fix = f"submit with '{self._hint('tasks', self.gpus_per_node)} ...'"
        check_one_task_per_gpu(self.tasks_per_node, self.gpus_per_node, fix)

    def _hint(self, what: str, value: object) -> str:
        hints = RESIZE_HINTS[self.launcher]
        if what == "tasks" and self.gpus_per_node and "gpus" in hints:
            what = "gpus"
        return hints[what].format(value)

    @property
    def resume_args(self) -> list[str]:
        """The override a restarted attempt appends ([] for verbs that re-run as they were)."""
        return list(RESUME_ARGS.get(self.verb, ()))

    @property
    def trainer_pins(self) -> list[str]:
        """`trainer.num_nodes=N trainer.devices=T` for verbs with a trainer, else []."""
        if self.verb not in TRAINER_VERBS:
            return []
        return [f"{NODES_KEY}={self.nodes}", f"{DEVICES_KEY}={self.tasks_per_node}"]

    @property
    def srun_flags(self) -> list[str]:
        """The step's srun options (module-level `srun_flags` of this job's container settings)."""
        return srun_flags(self.container_image, self.shared_dirs, self.container_mounts)

    def verb_args(self, args: Sequence[str]) -> list[str]:
        """The verb's arguments on the first attempt: [--config-name CONFIG] + pins + `args`.
        LaunchError when `args` sets a pinned key to another value."""
        self.validate()
        for pin in self.trainer_pins:
            key, value = pin.split("=", 1)
            what = "nodes" if key == NODES_KEY else "tasks"
            for a in args:
                if a.startswith(f"{key}=") and a.split("=", 1)[1] != value:
                    raise LaunchError(f"{a} but this job has {value}: submit with "
                                      f"'{self._hint(what, a.split('=', 1)[1])} ...' (or drop {a})")
        head = ["--config-name", self.config] if self.config else []
        return head + self.trainer_pins + list(args)

    def attempt_args(self, args: Sequence[str], restart_count: int = 0) -> list[str]:
        """`verb_args(args)`, with the resume override set when SLURM restarted the job (count > 0)."""
        argv = self.verb_args(args)
        return with_resume(argv, self.resume_args) if restart_count > 0 else argv

    def srun_command(self, python: str, args: Sequence[str], restart_count: int = 0) -> list[str]:
        """`srun FLAGS PYTHON -m llm2clip_nemo.cli VERB ARGS`: the step an sbatch script runs."""
        return ["srun", *self.srun_flags, python, "-m", "llm2clip_nemo.cli", self.verb,
                *self.attempt_args(args, restart_count)]
