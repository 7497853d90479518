"""On a real SLURM cluster (tests/slurm_fixtures.py starts one): the sbatch scripts, `llm2clip-nemo
launch`, requeue with resume, and a failing job's error reaching the caller."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_fixtures import REPO, slurm_cluster  # noqa: F401  (session fixture)
from test_launch_env import HOSTLISTS

from llm2clip_nemo.launch import cli as launch_cli
from llm2clip_nemo.launch.submit import LaunchSpec, render_sbatch, submit, wait
from llm2clip_nemo.runtime.dist_env import expand_nodelist

TESTS = Path(__file__).resolve().parent
# the launched test workload (tests/slurm_workload.py) must be importable on the nodes
WORKLOAD_SETUP = f"export PYTHONPATH={TESTS}${{PYTHONPATH:+:$PYTHONPATH}}"
DOCTOR_LINE = re.compile(r"^doctor rank=(\d+) local_rank=(\d+) world=(\d+) .* node=(\S+) .* launcher=(\S+) "
                         r"backend=gloo rank_sum=(\d+)$", re.M)


def check_doctor_2x2(text: str) -> None:
    """All 4 ranks reported, agree on the sum, and sit 2 per node on 2 nodes."""
    rows = sorted((int(r), int(lr), int(w), node, launcher, int(s))
                  for r, lr, w, node, launcher, s in DOCTOR_LINE.findall(text))
    assert [r[0] for r in rows] == [0, 1, 2, 3], text
    assert {(r[2], r[4], r[5]) for r in rows} == {(4, "slurm", 6)}
    by_node: dict[str, list[int]] = {}
    for r in rows:
        by_node.setdefault(r[3], []).append(r[1])
    assert sorted(sorted(v) for v in by_node.values()) == [[0, 1], [0, 1]], by_node
    assert "doctor OK: 4 ranks on 2 node(s)" in text



# SLURM 22.05's scontrol rejects a suffix after the last bracket ('gpu[1-2]-ib'); we expand it the way
# submitit's parser does, so that case is only checked against the table in test_launch_env.py.
@pytest.mark.parametrize("nodelist", [k for k in HOSTLISTS if k and not k.startswith("gpu[1-2]-ib")])
def test_expand_nodelist_matches_scontrol(slurm_cluster, nodelist):  # noqa: F811  (the fixture installs scontrol)
    ref = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    assert expand_nodelist(nodelist) == ref.stdout.split()

def _sbatch_and_wait(script: str, args: list[str], out: Path, timeout: float = 240) -> str:
    env = {**os.environ, "LLM2CLIP_PYTHON": sys.executable}
    jid = subprocess.run(["sbatch", "--parsable", f"--output={out}", script, *args], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while subprocess.run(["squeue", "-h", "-j", jid], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, f"job {jid} still queued/running after {timeout} s"
        time.sleep(1)
    state = subprocess.run(["sacct", "-n", "-X", "-j", jid, "-o", "State,ExitCode", "--parsable2"],
                           capture_output=True, text=True).stdout.strip()
    assert state.startswith("COMPLETED|0:0"), f"{script}: {state}\n{out.read_text()}"
    return out.read_text()


# (script, args, checker): the CPU sbatch scripts across 2 nodes x 2 tasks over gloo (pretrain_tiny,
# which needs data made first, has its own test below).
SBATCH_CASES = [("slurm/doctor.sh", [], check_doctor_2x2)]


@pytest.mark.parametrize("script,args,check", SBATCH_CASES, ids=[c[0] for c in SBATCH_CASES])
def test_sbatch_script_2_nodes_x_2_tasks(slurm_cluster, tmp_path, script, args, check):  # noqa: F811
    check(_sbatch_and_wait(script, args, tmp_path / "job.out"))


def _launch_2x2_and_wait(verb: str, args: list[str], folder: Path, capsys, minutes: int = 10) -> tuple[Path, str]:
    """`llm2clip-nemo launch VERB --nodes 2 --tasks-per-node 2 --wait ARGS`: succeeds on all 4 tasks, and
    `--dry-run` would have printed exactly the submitted script. Returns (job folder, job id)."""
    argv = [verb, "--cluster", "slurm", "--nodes", "2", "--tasks-per-node", "2", "--cpus-per-task", "1",
            "--time", str(minutes), "--folder", str(folder), "--wait", *args]
    rc = launch_cli.main(argv)
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "4 task(s) succeeded" in printed.out
    job_folder = Path(re.search(r"job folder (\S+)", printed.out).group(1))
    job_id = re.search(r"as job (\d+)", printed.out).group(1)
    parsed, _ = launch_cli.parse_args(argv)
    assert render_sbatch(launch_cli.spec_from_args(parsed), job_folder) == (
        job_folder / f"{job_id}_submission.sh").read_text()
    return job_folder, job_id


# (verb, verb args, checker): the same through `llm2clip-nemo launch --nodes 2 --tasks-per-node 2 --wait`.
LAUNCH_CASES = [("doctor", [], check_doctor_2x2)]


@pytest.mark.parametrize("verb,args,check", LAUNCH_CASES, ids=[c[0] for c in LAUNCH_CASES])
def test_launch_2_nodes_x_2_tasks(slurm_cluster, tmp_path, capsys, verb, args, check):  # noqa: F811
    folder, job_id = _launch_2x2_and_wait(verb, args, tmp_path, capsys)
    check("".join((folder / f"{job_id}_{t}_log.out").read_text() for t in range(4)))


def test_sbatch_refusal_reaches_the_caller(slurm_cluster, tmp_path, capsys):  # noqa: F811
    assert launch_cli.main(["doctor", "--partition", "nope", "--folder", str(tmp_path)]) == 1
    assert "submission failed: sbatch: error: invalid partition specified: nope" in capsys.readouterr().err


def _wait_for(cond, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_preempted_and_requeued_job_resumes_without_loss_or_repeat(slurm_cluster, tmp_path):  # noqa: F811
    """Two interruptions of one job: `scontrol requeue` (SLURM requeues by itself, as PreemptMode=REQUEUE
    does: no checkpoint() call, the original submission runs again), then the preemption signal submitit
    listens for (checkpoint() -> requeue with the resume argument)."""
    out, items = tmp_path / "work", 20
    spec = LaunchSpec(cluster="slurm", folder=str(tmp_path / "runs"), time_min=30, setup=[WORKLOAD_SETUP])
    job, folder = submit("slurm_workload", [f"out={out}", f"items={items}", "sleep=0.4"], spec,
                         resume_args=["resume=true"])
    log, attempts = out / "processed.log", out / "attempts.log"
    _wait_for(lambda: len(_lines(log)) >= 3, "the first attempt to process 3 items")
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    _wait_for(lambda: len(_lines(attempts)) >= 2 and len(_lines(log)) >= 10, "the second attempt to reach item 10")
    # what SLURM sends before the time limit to a job that asked for --signal (submitit: USR2)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    outcome = wait(job, timeout_s=180)
    assert outcome.returncode == 0, outcome
    ids = [int(x) for x in _lines(log)]
    assert ids == list(range(items)), f"lost or repeated items: {ids}"
    runs = attempts.read_text().splitlines()
    assert len(runs) == 3, runs
    starts = [int(re.search(r"start=(\d+)", r).group(1)) for r in runs]
    assert starts[0] == 0 and 3 <= starts[1] < starts[2] < items, starts
    assert [re.search(r"restart=(\d+)", r).group(1) for r in runs] == ["0", "1", "2"]
    assert runs[1].endswith("resume=true") and runs[2].endswith("resume=true")
    assert "this job is preempted" in (folder / f"{job.job_id}_0_log.err").read_text()


def test_failing_job_reports_traceback_last_line(slurm_cluster, tmp_path, capsys):  # noqa: F811
    argv = ["slurm_workload", "--cluster", "slurm", "--nodes", "2", "--time", "10", "--folder", str(tmp_path),
            "--setup", WORKLOAD_SETUP, "--wait", f"out={tmp_path / 'work'}", "items=5", "sleep=0", "fail_at=2"]
    assert launch_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert re.search(r"job \d+ failed \(\w+\): RuntimeError: item 2 is corrupt \(fail_at=2\)$", err.strip()), err
    assert (tmp_path / "work" / "processed.log").read_text().split() == ["0", "1"]


def _pretrain_tiny_args(tmp_path: Path) -> tuple[list[str], Path]:
    """Overrides for the real stage-2 recipe on tiny data: 4 steps, checkpoints at 2 and 4."""
    from clip_fixtures import tiny_offline_setup, tiny_overrides

    teacher, train, val = tiny_offline_setup(tmp_path / "data", n_train=64, n_val=16)
    exp = tmp_path / "runs"
    args = tiny_overrides(teacher, train, val, exp, steps=4) + [
        "model.num_workers=0", "exp_manager.checkpoint_every_n_steps=2",
        "model.global_batch_size=16"]
    return args, exp / "pretrain_tiny" / "checkpoints"


def check_pretrain_tiny_checkpoints(ckpt_dir: Path, log_text: str) -> None:
    """Step checkpoints at 2 and 4, written by a 4-rank run, holding the data position, not the teacher."""
    import torch

    ckpts = sorted(p.name for p in ckpt_dir.glob("*.ckpt"))
    assert "step=4-last.ckpt" in ckpts and "step=2.ckpt" in ckpts, (ckpts, log_text[-3000:])
    ck = torch.load(ckpt_dir / "step=4-last.ckpt", weights_only=False, map_location="cpu")
    # the engine's payload: rank 0's data position in the .ckpt, the tensors in its DCP directory
    assert ck["global_step"] == 4 and ck["engine"]["data"]["world_size"] == 4
    from llm2clip_nemo.models.loading import read_ckpt

    _, weights, _ = read_ckpt(ckpt_dir / "step=4-last.ckpt", "raw")
    assert any(k.startswith("net.vision.") for k in weights)
    assert not any("teacher" in k for k in weights)  # the teacher stays out of checkpoints


def test_sbatch_pretrain_tiny_2_nodes_x_2_tasks_writes_a_checkpoint(slurm_cluster, tmp_path):  # noqa: F811
    """The real stage-2 recipe from `sbatch slurm/pretrain_tiny.sh`, 4 gloo ranks on 2 nodes (tiny data)."""
    args, ckpt_dir = _pretrain_tiny_args(tmp_path)
    text = _sbatch_and_wait("slurm/pretrain_tiny.sh", args, tmp_path / "job.out", timeout=600)
    check_pretrain_tiny_checkpoints(ckpt_dir, text)


def test_launch_pretrain_tiny_2_nodes_x_2_tasks_writes_a_checkpoint(slurm_cluster, tmp_path, capsys):  # noqa: F811
    """The same run through `llm2clip-nemo launch pretrain --config-name pretrain_tiny` (submitit)."""
    args, ckpt_dir = _pretrain_tiny_args(tmp_path)
    folder, job_id = _launch_2x2_and_wait("pretrain", ["--config-name", "pretrain_tiny", *args], tmp_path / "jobs",
                                          capsys, minutes=20)
    check_pretrain_tiny_checkpoints(ckpt_dir, (folder / f"{job_id}_0_log.err").read_text())


def test_time_limit_requeues_and_resumes_without_loss_or_repeat(slurm_cluster, tmp_path):  # noqa: F811
    """A job that outlives its 1-minute limit: SLURM signals it `signal_delay_s` before the limit, submitit
    counts that as a time-out (bounded by max_requeues) and requeues it with the resume argument."""
    out, items = tmp_path / "work", 30
    spec = LaunchSpec(cluster="slurm", folder=str(tmp_path / "runs"), time_min=1, signal_delay_s=40,
                      max_requeues=4, setup=[WORKLOAD_SETUP])
    job, folder = submit("slurm_workload", [f"out={out}", f"items={items}", "sleep=1.5"], spec,
                         resume_args=["resume=true"])
    outcome = wait(job, timeout_s=420)
    assert outcome.returncode == 0, outcome
    log, attempts = out / "processed.log", out / "attempts.log"
    assert [int(x) for x in _lines(log)] == list(range(items)), "lost or repeated items"
    runs = attempts.read_text().splitlines()
    assert len(runs) >= 2, runs  # 45 s of work cannot fit between the start and the signal
    starts = [int(re.search(r"start=(\d+)", r).group(1)) for r in runs]
    assert starts[0] == 0 and starts == sorted(starts) and starts[-1] < items, starts
    assert all(r.endswith("resume=true") for r in runs[1:]), runs
    assert "this job is timed-out" in (folder / f"{job.job_id}_0_log.err").read_text()
