"""The submitit launcher without a cluster: sbatch rendering, argument routing, requeue arguments,
in-process verb runs, and a 2-task local job running `doctor` over gloo."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import submitit

from llm2clip_nemo.launch import cli as launch_cli
from llm2clip_nemo.launch.doctor import check_layout
from llm2clip_nemo.launch.job import with_resume
from llm2clip_nemo.launch.spec import LaunchSpec, limit_warnings, timeout_threshold_min
from llm2clip_nemo.launch.submit import REPO_SLURM_DIR, new_job_folder, render_sbatch
from llm2clip_nemo.launch.task import RecipeJob, resolve_target


def sbatch_flags(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, re.M))


def test_render_gpu_job(tmp_path):
    spec = LaunchSpec(nodes=4, gpus_per_node=8, cpus_per_task=16, partition="h100", time_min=1440, mem="0",
                      account="proj", job_name="big", folder=str(tmp_path))
    folder = tmp_path / "big-1"
    text = render_sbatch(spec, folder)
    flags = sbatch_flags(text)
    assert {k: flags[k] for k in ("nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task", "partition",
                                  "time", "mem", "account", "job-name", "signal")} == {
        "nodes": "4", "ntasks-per-node": "8", "gpus-per-node": "8", "cpus-per-task": "16", "partition": "h100",
        "time": "1440", "mem": "0", "account": "proj", "job-name": "big", "signal": "USR2@90"}
    assert "requeue" in flags  # scontrol requeue after preemption keeps the job id and folder
    assert f"source {REPO_SLURM_DIR / 'env.sh'}" in text
    srun = [ln for ln in text.splitlines() if ln.startswith("srun ")][0]
    assert "--kill-on-bad-exit=1" in srun
    assert srun.endswith(f"{sys.executable} -u -m submitit.core._submit {folder}")


def test_render_container_and_cpu_defaults(tmp_path):
    spec = LaunchSpec(container_image="nvcr.io/nvidia/nemo:25.04", folder=str(tmp_path))
    text = render_sbatch(spec, tmp_path / "j")
    flags = sbatch_flags(text)
    assert flags["ntasks-per-node"] == "1" and "gpus-per-node" not in flags
    assert "--container-image=nvcr.io/nvidia/nemo:25.04" in text
    assert f"--container-mounts={tmp_path}:{tmp_path}" in text
    assert text.rstrip().endswith(f"python3 -u -m submitit.core._submit {tmp_path / 'j'}")


@pytest.mark.parametrize("kwargs,match", [
    (dict(gpus_per_node=8, tasks_per_node=4), "tasks_per_node=4 with gpus_per_node=8: run one task per GPU"),
    (dict(cluster="local", nodes=2), "nodes=2 with cluster=local"),
    (dict(cluster="k8s"), "cluster='k8s': choose one of slurm, local"),
    (dict(nodes=0), "nodes=0 must be >= 1"),
])
def test_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LaunchSpec(**kwargs).validate()


def test_cli_routes_launcher_options_and_verb_args():
    args, verb = launch_cli.parse_args(
        ["pretrain", "--nodes", "2", "--config-name", "pretrain_large", "--gpus-per-node", "8",
         "trainer.num_nodes=2", "--time", "1-00:00:00", "--", "--nodes", "7"])
    assert (args.target, args.nodes, args.gpus_per_node, args.time) == ("pretrain", 2, 8, 1440)
    assert verb == ["--config-name", "pretrain_large", "trainer.num_nodes=2", "--nodes", "7"]


@pytest.mark.parametrize("text,minutes", [("90", 90), ("4:00:00", 240), ("45:30", 46), ("2-12", 3600),
                                          ("1-00:30", 1470), ("0:10:01", 11)])
def test_parse_time(text, minutes):
    assert launch_cli.parse_time(text) == minutes


def test_dry_run_prints_script_and_verb(capsys, tmp_path):
    rc = launch_cli.main(["extract", "--nodes", "2", "--gpus-per-node", "8", "--folder", str(tmp_path), "--dry-run",
                          "--config-name", "extract_llama3_8b", "data.urls=/d/{0..9}.tar"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("#!/bin/bash")
    assert sbatch_flags(out)["nodes"] == "2"
    assert out.rstrip().endswith("# each task runs: llm2clip-nemo extract --config-name extract_llama3_8b 'data.urls=/d/{0..9}.tar'")
    assert not list(tmp_path.iterdir())  # nothing submitted, no folder created


def test_trainer_verbs_get_the_job_shape(capsys, tmp_path):
    rc = launch_cli.main(["pretrain", "--nodes", "2", "--gpus-per-node", "8", "--folder", str(tmp_path), "--dry-run",
                          "--config-name", "pretrain_large", "trainer.devices=8"])
    assert rc == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == (
        "# each task runs: llm2clip-nemo pretrain trainer.num_nodes=2 trainer.devices=8 --config-name pretrain_large "
        "trainer.devices=8")


def test_unknown_target_is_refused(capsys):
    assert launch_cli.main(["pretrian", "--dry-run"]) == 2
    assert "unknown launch target 'pretrian'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="give a verb"):
        resolve_target("no_such_module.x")


def test_job_folders_are_fresh(tmp_path):
    spec = LaunchSpec(folder=str(tmp_path), job_name="j")
    a = new_job_folder(spec)
    a.mkdir()
    b = new_job_folder(spec)
    assert a != b and a.name.startswith("j-") and b.parent == a.parent == tmp_path


def test_with_resume_is_idempotent():
    argv = ["--config-name", "x", "exp_manager.resume_if_exists=false", "model.lr=1"]
    once = with_resume(argv, ["exp_manager.resume_if_exists=true"])
    assert once == ["--config-name", "x", "model.lr=1", "exp_manager.resume_if_exists=true"]
    assert with_resume(once, ["exp_manager.resume_if_exists=true"]) == once


def test_checkpoint_requeues_the_same_verb_with_resume():
    job = RecipeJob("pretrain", ["--config-name", "pretrain_tiny"], ["exp_manager.resume_if_exists=true"])
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    again = delayed.function.checkpoint().function
    assert again.target == "pretrain"
    assert again.argv == ["--config-name", "pretrain_tiny", "exp_manager.resume_if_exists=true"]


def test_recipe_job_runs_module_in_process_and_raises_on_failure(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    out = tmp_path / "w"
    assert RecipeJob("slurm_workload", [f"out={out}", "items=3", "sleep=0"])() == 0
    assert (out / "processed.log").read_text().split() == ["0", "1", "2"]
    with pytest.raises(RuntimeError, match=r"item 1 is corrupt \(fail_at=1\)"):
        RecipeJob("slurm_workload", [f"out={tmp_path / 'f'}", "items=3", "sleep=0", "fail_at=1"])()
    with pytest.raises(RuntimeError, match="doctor exited with status 2"):
        RecipeJob("doctor", ["--backend", "mpi"])()  # argparse rejects it: exit status 2, not a crash


def test_restarted_attempt_resumes_even_without_checkpoint_call(tmp_path, monkeypatch):
    """SLURM requeued the job by itself: the original submission runs again, with the resume args."""
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    out = tmp_path / "w"
    assert RecipeJob("slurm_workload", [f"out={out}", "items=2", "sleep=0"], ["resume=true"])() == 0
    (out / "ckpt.json").write_text('{"next": 1}')
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert RecipeJob("slurm_workload", [f"out={out}", "items=3", "sleep=0"], ["resume=true"])() == 0
    assert (out / "processed.log").read_text().split() == ["0", "1", "1", "2"]  # resumed at the checkpoint
    assert (out / "attempts.log").read_text().splitlines()[1].endswith("resume=true")


def test_system_exit_becomes_a_status_except_submitits_preemption_exit(tmp_path):
    with pytest.raises(RuntimeError, match="slurm_workload exited with status 3"):
        RecipeJob("slurm_workload", [f"out={tmp_path}", "items=1", "exit=3"])()
    with pytest.raises(SystemExit) as e:  # submitit requeued the job: no result must be written
        RecipeJob("slurm_workload", [f"out={tmp_path}", "items=1", "exit=-1"])()
    assert e.value.code == -1


def test_doctor_layout_checks():
    ok = [(0, "n1", 0), (1, "n1", 1), (2, "n2", 0), (3, "n2", 1)]
    assert check_layout(4, 6, ok) == []
    assert check_layout(4, 5, ok) == ["all_reduce of ranks gave 5, expected 6 for world size 4"]
    dup = [(0, "n1", 0), (1, "n1", 0), (2, "n2", 0), (2, "n2", 1)]
    assert check_layout(4, 5, dup)[1:] == ["ranks reported [0, 1, 2, 2], expected 0..3 once each",
                                           "(node, local_rank) claimed by several ranks: [('n1', 0)]"]


def test_local_cluster_runs_doctor_on_2_tasks(tmp_path, capsys):
    """`--cluster local`: submitit's LocalExecutor, ranks from SUBMITIT_LOCAL_* through DistEnv."""
    argv = ["doctor", "--cluster", "local", "--tasks-per-node", "2", "--time", "5", "--folder", str(tmp_path),
            "--wait"]
    assert launch_cli.main(argv) == 0
    printed = capsys.readouterr().out
    folder = Path(re.search(r"job folder (\S+)", printed).group(1))
    logs = "".join(p.read_text() for p in sorted(folder.glob("*_log.out")))
    ranks = sorted(re.findall(r"doctor rank=(\d) local_rank=\d world=2 .* launcher=submitit-local backend=gloo rank_sum=1", logs))
    assert ranks == ["0", "1"], logs


@pytest.mark.parametrize("limit,threshold", [(5, -5), (10, 0), (11, 1), (20, 10), (50, 40), (60, 48), (240, 192)])
def test_timeout_threshold_is_submitits_rule(limit, threshold):
    """min(80% of the limit, limit - 10 min), checked against submitit's own SignalHandler.has_timed_out
    one second either side of the threshold (limits <= 10 min: every signal is a time-out)."""
    import time
    from types import SimpleNamespace

    from submitit.core.job_environment import SignalHandler

    assert timeout_threshold_min(limit) == pytest.approx(threshold)
    handler = SignalHandler(None, None, SimpleNamespace(_timeout_min=limit))
    handler._start_time = time.time()  # a signal right at the start of an attempt
    assert handler.has_timed_out() is (threshold <= 0)
    if threshold > 0:
        handler._start_time = time.time() - threshold * 60 + 1
        assert handler.has_timed_out() is False
        handler._start_time = time.time() - threshold * 60 - 1
        assert handler.has_timed_out() is True


def test_short_time_limit_warns(capsys, tmp_path):
    assert limit_warnings(LaunchSpec(time_min=11)) == []
    expected = ("--time 10 min: submitit counts a signal as a time-out once an attempt has run min(80% of the limit, "
                "limit - 10 min) = 0 min, so every preemption uses one of the 3 requeues (--max-requeues); "
                "give --time > 10 min or raise --max-requeues.")
    assert limit_warnings(LaunchSpec(time_min=10)) == [expected]
    rc = launch_cli.main(["doctor", "--time", "10", "--folder", str(tmp_path), "--dry-run"])
    assert rc == 0 and capsys.readouterr().err == f"llm2clip-nemo launch: warning: {expected}\n"
