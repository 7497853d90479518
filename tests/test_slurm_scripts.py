"""slurm/*.sh without a cluster: resources, one task per GPU, requeue flags, and the exact command
each task runs (LLM2CLIP_DRY_RUN=1 prints it instead of calling srun)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU_SCRIPTS = {  # script -> (verb, config)
    "pretrain_large.sh": ("pretrain", "pretrain_large"),
    "caption_contrastive.sh": ("caption-contrastive", "caption_contrastive_llama3_8b"),
    "extract_embeddings.sh": ("extract", "extract_llama3_8b"),
}
CPU_SCRIPTS = {"pretrain_tiny.sh": ("pretrain", "pretrain_tiny"), "doctor.sh": ("doctor", None)}


def flags(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S*))?", (REPO / "slurm" / script).read_text(), re.M))


def dry_run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NCCL_", "CONTAINER_"))}
    clean.pop("OMP_NUM_THREADS", None)
    return subprocess.run(["bash", f"slurm/{script}", *args], cwd=REPO, capture_output=True, text=True,
                          env={**clean, "LLM2CLIP_DRY_RUN": "1", **env})


@pytest.mark.parametrize("script", sorted(GPU_SCRIPTS))
def test_gpu_scripts_one_task_per_gpu_and_requeue(script):
    f = flags(script)
    assert f["ntasks-per-node"] == f["gpus-per-node"] == "8"
    assert f["signal"] == "USR1@90" and "requeue" in f and f["open-mode"] == "append"
    assert f["mem"] == "0" and "exclusive" in f


@pytest.mark.parametrize("script", sorted(CPU_SCRIPTS))
def test_cpu_scripts_are_2_nodes_x_2_tasks_without_gpus(script):
    f = flags(script)
    assert (f["nodes"], f["ntasks-per-node"], f["cpus-per-task"]) == ("2", "2", "1") and "gpus-per-node" not in f


@pytest.mark.parametrize("script", sorted({**GPU_SCRIPTS, **CPU_SCRIPTS}))
def test_overrides_pass_through_to_the_verb(script):
    verb, config = {**GPU_SCRIPTS, **CPU_SCRIPTS}[script]
    r = dry_run(script, "model.optim.lr=5e-4", "data.x=a b", SLURM_JOB_NUM_NODES="2", SLURM_TASKS_PER_NODE="4(x2)",
                LLM2CLIP_PYTHON="/py")
    assert r.returncode == 0, r.stderr
    cmd = shlex.split(re.search(r"on localhost: (srun .*)$", r.stdout).group(1))
    want = ["srun", "--kill-on-bad-exit=1", "/py", "-m", "llm2clip_nemo.cli", verb]
    want += ["--config-name", config] if config else []
    # the allocation's shape, for the trainer's devices * num_nodes == tasks check
    want += ["trainer.num_nodes=2", "trainer.devices=4"] if verb in ("pretrain", "caption-contrastive") else []
    assert cmd == want + ["model.optim.lr=5e-4", "data.x=a b"]


def test_requeued_attempt_resumes():
    r = dry_run("pretrain_large.sh", "model.optim.lr=5e-4", SLURM_RESTART_COUNT="1", SLURM_JOB_NUM_NODES="8")
    assert r.stdout.strip().endswith("model.optim.lr=5e-4 exp_manager.resume_if_exists=true")
    assert "attempt 1" in r.stdout


@pytest.mark.parametrize("arg,flag", [("trainer.num_nodes=32", "--nodes=32"), ("trainer.devices=4", "--ntasks-per-node=4")])
def test_shape_mismatch_is_refused(arg, flag):
    r = dry_run("pretrain_large.sh", arg, SLURM_JOB_NUM_NODES="8", SLURM_NTASKS_PER_NODE="8")
    assert r.returncode == 2 and not r.stdout
    assert f"{arg} but this job has 8: submit with 'sbatch {flag} ...'" in r.stderr


def test_container_line():
    r = dry_run("pretrain_large.sh", CONTAINER_IMAGE="nvcr.io/nvidia/nemo:25.04", SLURM_SUBMIT_DIR="/w",
                CONTAINER_MOUNTS="/data:/data", LLM2CLIP_SLURM_DIR=str(REPO / "slurm"))
    cmd = shlex.split(re.search(r"on localhost: (srun .*)$", r.stdout).group(1))
    assert cmd[:8] == ["srun", "--kill-on-bad-exit=1", "--container-image=nvcr.io/nvidia/nemo:25.04",
                       "--container-workdir=/w", "--container-mounts=/w:/w,/data:/data", "python3", "-m",
                       "llm2clip_nemo.cli"]


def test_environment_for_h100_tasks():
    show = "NCCL_SOCKET_IFNAME CUDA_DEVICE_MAX_CONNECTIONS TORCH_NCCL_ASYNC_ERROR_HANDLING OMP_NUM_THREADS NCCL_IB_HCA"
    script = f'source slurm/env.sh; for v in {show}; do echo "$v=${{!v-unset}}"; done'
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCCL_", "OMP_", "CUDA_", "TORCH_"))}
    out = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True,
                         env={**env, "SLURM_CPUS_PER_TASK": "16"}).stdout.split()
    assert out == ["NCCL_SOCKET_IFNAME=^lo,docker0", "CUDA_DEVICE_MAX_CONNECTIONS=1",
                   "TORCH_NCCL_ASYNC_ERROR_HANDLING=1", "OMP_NUM_THREADS=16", "NCCL_IB_HCA=unset"]
    mine = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={**env, "NCCL_IB_HCA": "mlx5_0", "OMP_NUM_THREADS": "4"}).stdout.split()
    assert "NCCL_IB_HCA=mlx5_0" in mine and "OMP_NUM_THREADS=4" in mine  # user settings win
