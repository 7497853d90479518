"""`llm2clip-nemo launch VERB [launcher options] [verb args and overrides]`.

    llm2clip-nemo launch pretrain --nodes 4 --gpus-per-node 8 --time 24:00:00 \\
        --config-name pretrain_large trainer.num_nodes=4 model.optim.lr=5e-4
    llm2clip-nemo launch doctor --cluster local --tasks-per-node 2 --wait
    llm2clip-nemo launch pretrain --nodes 2 --gpus-per-node 8 --dry-run --config-name pretrain_large

Launcher options are the ones listed by `--help`; every other argument (and everything after
`--`) is handed to the verb unchanged. VERB is a CLI verb or a module path with `main(argv)`.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys

from ..config.cli_args import verb_parser
from .spec import CLUSTERS, LaunchSpec, limit_warnings
from .submit import new_job_folder, recipe_job, render_sbatch, submit, wait


def parse_time(value: str) -> int:
    """SLURM time ('90', '1:30:00', '2-00:00:00', '45:00') -> whole minutes."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"--time {value!r}: use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS.")
    days, a, b, c = m.groups()
    if c is not None:  # H:M:S
        minutes = int(a) * 60 + int(b) + (int(c) > 0)
    elif b is not None:  # M:S, or D-H:M with a day part
        minutes = int(a) * 60 + int(b) if days else int(a) + (int(b) > 0)
    else:  # minutes, or D-H
        minutes = int(a) * 60 if days else int(a)
    return minutes + int(days or 0) * 24 * 60


def build_parser() -> argparse.ArgumentParser:
    p = verb_parser("launch", allow_abbrev=False,
                                description="Run a verb on SLURM (submitit) or locally, with requeue and resume.")
    p.add_argument("target", metavar="VERB", help="CLI verb (pretrain, extract, doctor, ...) or module.path")
    p.add_argument("--cluster", choices=CLUSTERS, default="slurm")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--tasks-per-node", type=int, default=None, help="default: one per GPU (1 without GPUs)")
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--partition", default=None)
    p.add_argument("--time", type=parse_time, default=60, help="time limit (minutes or [D-]HH:MM:SS)")
    p.add_argument("--mem", default=None, help="memory per node, SLURM syntax (64G, 0 = all)")
    p.add_argument("--account", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--job-name", default=None, help="default: llm2clip-VERB")
    p.add_argument("--folder", default="runs/launch", help="parent of the per-run job folders")
    p.add_argument("--signal-delay", type=int, default=90, help="seconds of warning before the time limit")
    p.add_argument("--max-requeues", type=int, default=3,
                   help="time-outs that may requeue the job; a signal after min(80%% of --time, --time - 10 min) "
                        "of an attempt counts as a time-out, an earlier one as a preemption (not counted)")
    p.add_argument("--container-image", default=None, help="pyxis/enroot image for srun")
    p.add_argument("--container-mounts", default=None)
    p.add_argument("--python", default=None, help="interpreter the tasks run (default: this one)")
    p.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="shell line run in the batch script before srun (module load, export); repeatable")
    p.add_argument("--resume-arg", action="append", default=None, metavar="KEY=VALUE",
                   help="override appended when a preempted job is requeued (default: the verb's own)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script and exit")
    p.add_argument("--wait", action="store_true", help="block until the job ends; exit with its status")
    return p


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split launcher options from the verb's arguments (unknown options and everything after `--`)."""
    tail: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1:]
    args, rest = build_parser().parse_known_args(argv)
    return args, rest + tail


def spec_from_args(args: argparse.Namespace) -> LaunchSpec:
    spec = LaunchSpec(
        cluster=args.cluster, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node, cpus_per_task=args.cpus_per_task, partition=args.partition,
        time_min=args.time, mem=args.mem, account=args.account, qos=args.qos,
        job_name=args.job_name or f"llm2clip-{args.target.replace('.', '-')}", folder=args.folder,
        signal_delay_s=args.signal_delay, max_requeues=args.max_requeues,
        container_image=args.container_image, container_mounts=args.container_mounts, python=args.python,
        setup=list(args.setup),
    )
    spec.validate()
    return spec


def main(argv: list[str] | None = None) -> int:
    args, verb_argv = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        spec = spec_from_args(args)
        folder = new_job_folder(spec)
        task = recipe_job(args.target, verb_argv, spec, folder, args.resume_arg)  # refuses what cannot run
        for line in limit_warnings(spec):
            print(f"llm2clip-nemo launch: warning: {line}", file=sys.stderr)
        if args.dry_run:
            if spec.cluster != "slurm":
                raise ValueError("--dry-run renders an sbatch script: use it with --cluster slurm.")
            print(render_sbatch(spec, folder), end="")
            shown = shlex.join([args.target, *task.argv])
            print(f"# each task runs: llm2clip-nemo {shown}")
            return 0
        job, folder = submit(args.target, verb_argv, spec, resume_args=args.resume_arg)
    except ValueError as e:
        print(f"llm2clip-nemo launch: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # sbatch refused the job (bad partition, account, limits): say why
        print(f"llm2clip-nemo launch: submission failed: {e}", file=sys.stderr)
        return 1
    print(f"submitted {args.target} as job {job.job_id} ({spec.cluster}, {spec.nodes} node(s) x "
          f"{spec.ntasks_per_node} task(s)); job folder {folder}")
    print(f"  logs: {job.paths.stdout}  {job.paths.stderr}  (one pair per task, _0_ = rank 0)")
    if not args.wait:
        if spec.cluster == "slurm":
            print(f"  follow: squeue -j {job.job_id}; sacct -j {job.job_id}; stop: scancel {job.job_id}")
        return 0
    outcome = wait(job)
    if outcome.returncode:
        print(f"job {outcome.job_id} failed ({outcome.state}): {outcome.message}", file=sys.stderr)
    else:
        print(f"job {outcome.job_id} finished: {spec.num_tasks} task(s) succeeded")
    return outcome.returncode


if __name__ == "__main__":
    sys.exit(main())
