"""SLURM/torchrun/submitit variables -> torch.distributed coordinates (runtime.dist_env)."""
from __future__ import annotations

import pytest

from llm2clip_nemo.runtime.dist_env import DEFAULT_PORT_BASE, DistEnv, expand_nodelist, slurm_port

HOSTLISTS = {
    "gpu[001-003,007],login1": ["gpu001", "gpu002", "gpu003", "gpu007", "login1"],
    "n[1-2]": ["n1", "n2"],
    "node7": ["node7"],
    "a[08-11]": ["a08", "a09", "a10", "a11"],
    "rack[1-2]-gpu[01-02]": ["rack1-gpu01", "rack1-gpu02", "rack2-gpu01", "rack2-gpu02"],
    "gpu[1-2]-ib,cpu3": ["gpu1-ib", "gpu2-ib", "cpu3"],
    "x[9-11],y": ["x9", "x10", "x11", "y"],
    "": [],
}


@pytest.mark.parametrize("nodelist,hosts", HOSTLISTS.items())
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


# The same table against `scontrol show hostnames`: tests/test_slurm.py (it needs the SLURM cluster fixture,
# which installs scontrol).


@pytest.mark.parametrize("bad", ["gpu[1-3", "gpu[a-b]", "gpu[5-3]"])
def test_expand_nodelist_rejects_malformed(bad):
    with pytest.raises(ValueError, match="malformed SLURM hostlist"):
        expand_nodelist(bad)


STEP = {  # what srun sets in task 5 of a 2-node x 4-task step (measured on the CI cluster)
    "SLURM_JOB_ID": "123456",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "8",
    "SLURM_JOB_NODELIST": "gpu[001-003,007],login1",
    "SLURM_STEP_NODELIST": "gpu[003,007]",
}


def test_slurm_step_maps_to_torch():
    env = DistEnv.from_environ(STEP)
    assert env == DistEnv(rank=5, local_rank=1, world_size=8, master_addr="gpu003",
                          master_port=20000 + 3456, launcher="slurm")
    assert env.torch_environ() == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8",
                                   "MASTER_ADDR": "gpu003", "MASTER_PORT": "23456"}


def test_slurm_job_nodelist_used_without_step_nodelist():
    env = DistEnv.from_environ({k: v for k, v in STEP.items() if k != "SLURM_STEP_NODELIST"})
    assert env.master_addr == "gpu001"


def test_slurm_explicit_master_wins_over_nodelist():
    env = DistEnv.from_environ({**STEP, "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "31000"})
    assert (env.master_addr, env.master_port, env.rank) == ("10.0.0.5", 31000, 5)


def test_batch_script_is_not_rank_zero_of_n():
    """The sbatch script sees SLURM_PROCID=0, SLURM_NTASKS=8 but is a single process (no step id)."""
    batch = {k: v for k, v in STEP.items() if k not in ("SLURM_STEP_ID", "SLURM_STEP_NODELIST")}
    batch["SLURM_PROCID"] = "0"
    assert DistEnv.from_environ(batch) == DistEnv()


def test_torchrun_wins_over_slurm():
    """torchrun inside srun: torchrun's per-worker variables describe this process."""
    env = DistEnv.from_environ({**STEP, "RANK": "3", "LOCAL_RANK": "3", "WORLD_SIZE": "16",
                                "MASTER_ADDR": "gpu001", "MASTER_PORT": "29400"})
    assert env == DistEnv(rank=3, local_rank=3, world_size=16, master_addr="gpu001",
                          master_port=29400, launcher="torchrun")


def test_torchrun_defaults():
    env = DistEnv.from_environ({"RANK": "0", "WORLD_SIZE": "2"})
    assert (env.master_addr, env.master_port, env.local_rank) == ("127.0.0.1", DEFAULT_PORT_BASE, 0)
    assert env.distributed


def test_submitit_local_executor():
    env = DistEnv.from_environ({"SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
                                "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_ID": "4242"})
    assert env == DistEnv(rank=1, local_rank=1, world_size=2, master_addr="127.0.0.1",
                          master_port=24242, launcher="submitit-local")


def test_no_launcher_is_single_process():
    env = DistEnv.from_environ({"PATH": "/bin"})
    assert env == DistEnv() and not env.distributed


@pytest.mark.parametrize("job_id,port", [("7", 20007), ("123456", 23456), ("99999", 29999), ("1234_5", 22345), ("", 20000)])
def test_slurm_port(job_id, port):
    assert slurm_port(job_id) == port
