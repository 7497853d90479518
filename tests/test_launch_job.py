"""One launch description (launch.job) for both launchers: its values for a 2-node x 4-GPU job, the
refusals, and the sbatch scripts' srun line (run by bash with a recording `srun` on PATH, no SLURM)
equal to the one `llm2clip-nemo launch` (submitit) gives each task of the same job."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llm2clip_nemo.launch import cli as launch_cli
from llm2clip_nemo.launch.describe import gpus_per_node, tasks_per_node
from llm2clip_nemo.launch.job import RESUME_ARGS, TRAINER_VERBS, LaunchError, LaunchJob
from llm2clip_nemo.launch.spec import LaunchSpec
from llm2clip_nemo.launch.submit import recipe_job, slurm_parameters
from llm2clip_nemo.verbs import VERBS

REPO = Path(__file__).resolve().parents[1]
RESUME = "exp_manager.resume_if_exists=true"
# script -> (verb, config, GPUs per node in its #SBATCH lines)
SCRIPTS = {"pretrain_large.sh": ("pretrain", "pretrain_large", 8),
           "caption_contrastive.sh": ("caption-contrastive", "caption_contrastive_llama3_8b", 8),
           "extract_embeddings.sh": ("extract", "extract_llama3_8b", 8),
           "pretrain_tiny.sh": ("pretrain", "pretrain_tiny", 0), "doctor.sh": ("doctor", None, 0)}


def test_description_of_a_2_node_x_4_gpu_job():
    job = LaunchJob("pretrain", nodes=2, tasks_per_node=4, gpus_per_node=4, config="pretrain_large")
    assert job.resume_args == [RESUME]
    assert job.trainer_pins == ["trainer.num_nodes=2", "trainer.devices=4"]
    assert job.srun_flags == ["--kill-on-bad-exit=1"]
    assert job.attempt_args(["model.optim.lr=5e-4", "trainer.devices=4"]) == [
        "--config-name", "pretrain_large", "trainer.num_nodes=2", "trainer.devices=4", "model.optim.lr=5e-4",
        "trainer.devices=4"]
    # a restarted attempt sets the resume override once, replacing the caller's value of the key
    assert job.attempt_args(["exp_manager.resume_if_exists=false"], restart_count=2) == [
        "--config-name", "pretrain_large", "trainer.num_nodes=2", "trainer.devices=4", RESUME]
    boxed = LaunchJob("pretrain", nodes=2, tasks_per_node=4, gpus_per_node=4, container_image="nemo:25.04",
                      shared_dirs=("/w/runs/launch", "/w"), container_mounts="/data:/data")
    assert boxed.srun_flags == ["--kill-on-bad-exit=1", "--container-image=nemo:25.04", "--container-workdir=/w",
                                "--container-mounts=/w:/w,/data:/data"]  # /w/runs/launch is inside /w
    elsewhere = LaunchJob("doctor", 2, 4, container_image="i", shared_dirs=("/scratch/runs", "/w"))
    assert elsewhere.srun_flags[-1] == "--container-mounts=/scratch/runs:/scratch/runs,/w:/w"
    for verb in ("extract", "doctor", "evaluate"):  # no trainer, re-run as they were
        plain = LaunchJob(verb, nodes=2, tasks_per_node=4, gpus_per_node=4)
        assert (plain.resume_args, plain.trainer_pins, plain.attempt_args(["a=1"], 1)) == ([], [], ["a=1"])
    assert set(RESUME_ARGS) | set(TRAINER_VERBS) <= set(VERBS)


@pytest.mark.parametrize("launcher,arg,have,hint", [
    ("sbatch", "trainer.num_nodes=4", 2, "sbatch --nodes=4"),
    ("sbatch", "trainer.devices=8", 4, "sbatch --ntasks-per-node=8"),
    ("launch", "trainer.num_nodes=4", 2, "llm2clip-nemo launch --nodes 4"),
    ("launch", "trainer.devices=8", 4, "llm2clip-nemo launch --gpus-per-node 8"),
])
def test_contradicting_pin_names_the_launchers_flag(launcher, arg, have, hint):
    job = LaunchJob("caption-contrastive", nodes=2, tasks_per_node=4, gpus_per_node=4, launcher=launcher)
    with pytest.raises(LaunchError) as e:
        job.verb_args(["model.optim.lr=1", arg])
    assert str(e.value) == f"{arg} but this job has {have}: submit with '{hint} ...' (or drop {arg})"


def test_one_task_per_gpu_and_shapes_from_slurm_variables():
    with pytest.raises(LaunchError, match=r"^tasks_per_node=4 with gpus_per_node=8: run one task per GPU "
                                          r"\(submit with 'sbatch --ntasks-per-node=8 \.\.\.'\)\.$"):
        LaunchJob("extract", nodes=1, tasks_per_node=4, gpus_per_node=8).validate()
    assert tasks_per_node({"SLURM_TASKS_PER_NODE": "8(x4)"}) == 8
    assert tasks_per_node({"SLURM_NTASKS_PER_NODE": "2", "SLURM_TASKS_PER_NODE": "2(x3)"}) == 2
    assert tasks_per_node({}) == 1
    with pytest.raises(LaunchError, match=r"^SLURM_TASKS_PER_NODE=4\(x2\),2: every node must run the same number"):
        tasks_per_node({"SLURM_TASKS_PER_NODE": "4(x2),2"})
    assert [gpus_per_node({"SLURM_GPUS_PER_NODE": g}) for g in ("8", "h100:4", "")] == [8, 4, 0]


def _sbatch_srun_argv(script: str, tmp_path: Path, args: list[str], **env: str) -> tuple[int, list[str], str]:
    """Run slurm/SCRIPT under bash as the batch step would, with `srun` on PATH replaced by a recorder:
    (exit status, the srun argv it was exec'd with, stderr)."""
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "srun").write_text('#!/bin/bash\nprintf \'%s\\0\' "$@" > "$SRUN_ARGV"\n')
    (shim / "srun").chmod(0o755)
    record = tmp_path / "srun.argv"
    record.unlink(missing_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CONTAINER_", "LLM2CLIP_"))}
    r = subprocess.run(["bash", f"slurm/{script}", *args], cwd=REPO, capture_output=True, text=True,
                       env={**clean, "PATH": f"{shim}:{clean['PATH']}", "SRUN_ARGV": str(record), **env})
    argv = ["srun", *record.read_text().split("\0")[:-1]] if record.exists() else []
    return r.returncode, argv, r.stderr


def _launch_srun_argv(verb: str, config: str | None, args: list[str], spec: LaunchSpec, folder: Path,
                      restart: int) -> list[str]:
    """What `llm2clip-nemo launch` runs on each task of the same job: submitit's srun carries
    slurm_parameters' srun_args, and RecipeJob runs the verb in-process with its attempt's arguments,
    as `PYTHON -m llm2clip_nemo.cli VERB ARGS` would."""
    task = recipe_job(verb, args, spec, folder, config_name=config)
    return ["srun", *slurm_parameters(spec, folder)["srun_args"], spec.python, "-m", "llm2clip_nemo.cli", verb,
            *task.attempt_argv({"SLURM_RESTART_COUNT": str(restart)})]


@pytest.mark.parametrize("restart", [0, 1])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_sbatch_srun_line_equals_launchs_for_the_same_2x4_job(script, restart, tmp_path):
    verb, config, gpus = SCRIPTS[script]
    args = ["model.optim.lr=5e-4", "data.x=a b"]
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_RESTART_COUNT": str(restart),
           "LLM2CLIP_PYTHON": "/py", **({"SLURM_GPUS_PER_NODE": "4"} if gpus else {})}
    rc, sbatch, err = _sbatch_srun_argv(script, tmp_path, args, **env)
    assert rc == 0, err
    spec = LaunchSpec(nodes=2, gpus_per_node=4 if gpus else 0, tasks_per_node=None if gpus else 4, python="/py")
    assert sbatch == _launch_srun_argv(verb, config, args, spec, tmp_path / "runs" / "j", restart)
    assert (RESUME in sbatch) is (restart == 1 and verb != "extract" and verb != "doctor")


def test_container_srun_line_equals_launchs(tmp_path, monkeypatch):
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "4", "SLURM_GPUS_PER_NODE": "4",
           "CONTAINER_IMAGE": "nvcr.io/nvidia/nemo:25.04", "CONTAINER_MOUNTS": "/data:/data",
           "SLURM_SUBMIT_DIR": str(tmp_path), "LLM2CLIP_SLURM_DIR": str(REPO / "slurm")}
    rc, sbatch, err = _sbatch_srun_argv("pretrain_large.sh", tmp_path, [], **env)
    assert rc == 0, err
    monkeypatch.chdir(tmp_path)  # launch's working directory is where it was called from
    spec = LaunchSpec(nodes=2, gpus_per_node=4, container_image="nvcr.io/nvidia/nemo:25.04",
                      container_mounts="/data:/data", python="python3")
    assert sbatch == _launch_srun_argv("pretrain", "pretrain_large", [], spec, tmp_path / "runs" / "j", 0)
    assert sbatch[1:5] == ["--kill-on-bad-exit=1", "--container-image=nvcr.io/nvidia/nemo:25.04",
                           f"--container-workdir={tmp_path}", f"--container-mounts={tmp_path}:{tmp_path},/data:/data"]


def test_both_launchers_refuse_a_contradicting_pin_with_exit_2(tmp_path, capsys):
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "4"}
    rc, argv, err = _sbatch_srun_argv("pretrain_tiny.sh", tmp_path, ["trainer.num_nodes=4"], **env)
    assert (rc, argv) == (2, [])  # srun never ran
    assert err == ("llm2clip: trainer.num_nodes=4 but this job has 2: submit with 'sbatch --nodes=4 ...' "
                   "(or drop trainer.num_nodes=4)\n")
    rc = launch_cli.main(["pretrain", "--nodes", "2", "--tasks-per-node", "4", "--folder", str(tmp_path / "runs"),
                          "--dry-run", "trainer.num_nodes=4"])
    assert rc == 2 and capsys.readouterr().err == (
        "llm2clip-nemo launch: trainer.num_nodes=4 but this job has 2: submit with 'llm2clip-nemo launch --nodes 4 "
        "...' (or drop trainer.num_nodes=4)\n")
    rc, argv, err = _sbatch_srun_argv("doctor.sh", tmp_path, [], SLURM_TASKS_PER_NODE="2,1")
    assert (rc, argv) == (2, []) and re.fullmatch(r"llm2clip: SLURM_TASKS_PER_NODE=2,1: every node must run .*\n", err)


def test_describe_runs_without_site_packages():
    """The batch host's python3 may lack the package's dependencies (torch, submitit, omegaconf): `-S`
    leaves site-packages off the path, and only the standard library and this package get imported."""
    probe = ("import sys; from llm2clip_nemo.launch.describe import main; rc = main(['pretrain', 'pretrain_tiny']); "
             "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'__main__'}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CONTAINER_", "LLM2CLIP_", "PYTHON"))}
    r = subprocess.run([sys.executable, "-S", "-c", probe], cwd=REPO, capture_output=True, text=True,
                       env={**env, "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "3"})
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.splitlines() == [
        "cmd=(srun --kill-on-bad-exit=1 python3 -m llm2clip_nemo.cli pretrain --config-name pretrain_tiny "
        "trainer.num_nodes=2 trainer.devices=3)", "['llm2clip_nemo']"]
