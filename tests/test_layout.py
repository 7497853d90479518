"""runtime.layout: the one parallel layout (groups and their members), the one TP check with its
messages, the GPUs-per-node rule from the launcher's variables, and no group read from globals
outside runtime/."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from dist_utils import run_workers

from llm2clip_nemo.runtime import DistEnv, LayoutError, check_tp, init_parallel, processes_per_node

PACKAGE = Path(__file__).resolve().parents[1] / "llm2clip_nemo"


def test_check_tp_messages_name_the_field_the_value_and_the_fix():
    with pytest.raises(LayoutError) as e:
        check_tp(0, 4)
    assert str(e.value) == ("model.teacher.tensor_parallel=0 must be >= 1: set it to 1 (no tensor parallelism) "
                            "or a divisor of the GPUs per node.")
    with pytest.raises(LayoutError) as e:
        check_tp(3, 4)
    assert str(e.value) == ("model.teacher.tensor_parallel=3 does not divide the world size 4: set it to one of "
                            "[1, 2, 4] or launch a multiple of 3 processes.")
    with pytest.raises(LayoutError) as e:
        check_tp(4, 12, 6, field="teacher.tensor_parallel", per_node_source="SLURM_NTASKS_PER_NODE=6")
    assert str(e.value) == ("teacher.tensor_parallel=4 does not divide the 6 GPUs per node (SLURM_NTASKS_PER_NODE=6): "
                            "a tensor-parallel group would cross nodes. Set it to one of [1, 2, 3, 6] or launch "
                            "4 GPUs per node.")
    check_tp(2, 4, 8)
    check_tp(4, 8, None)  # processes per node unknown: only the world size is checked


@pytest.mark.parametrize("environ,expected", [
    ({"RANK": "0", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, (4, "LOCAL_WORLD_SIZE=4")),
    ({"RANK": "0", "WORLD_SIZE": "8"}, (None, "")),  # torchrun-style variables set by hand
    ({"SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_STEP_TASKS_PER_NODE": "8(x2)"},
     (8, "SLURM_STEP_TASKS_PER_NODE=8(x2)")),
    ({"SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "20", "SLURM_TASKS_PER_NODE": "8(x2),4"},
     (4, "SLURM_TASKS_PER_NODE=8(x2),4")),  # uneven nodes: t must divide every count
    ({"SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2"},
     (2, "SLURM_NTASKS_PER_NODE=2")),
    ({"SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_NTASKS": "3"}, (3, "SUBMITIT_LOCAL_NTASKS=3")),
    ({}, (None, "")),
])
def test_processes_per_node_from_each_launcher(environ, expected):
    assert processes_per_node(DistEnv.from_environ(environ), environ) == expected


def test_four_ranks_two_per_node_refuse_tp4_before_any_rendezvous():
    environ = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}  # port 1: a rendezvous would fail, not hang
    with pytest.raises(LayoutError) as e:
        init_parallel(4, environ=environ)
    assert str(e.value) == ("model.teacher.tensor_parallel=4 does not divide the 2 GPUs per node (LOCAL_WORLD_SIZE=2): "
                            "a tensor-parallel group would cross nodes. Set it to one of [1, 2] or launch 4 GPUs "
                            "per node.")
    with pytest.raises(LayoutError, match=r"^--tensor-parallel=2: this stage runs without megatron"):
        init_parallel(2, field="--tensor-parallel", megatron=False, environ={**environ, "LOCAL_WORLD_SIZE": "4"})


def test_pretrain_refuses_a_tp_group_across_nodes_with_exit_2(monkeypatch, capsys):
    from llm2clip_nemo.recipes.train_clip import main

    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    assert main(["--config-name", "pretrain_tiny", "model.teacher.tensor_parallel=4"], mode="pretrain") == 2
    err = capsys.readouterr().err
    assert err == ("llm2clip-nemo pretrain: config error: model.teacher.tensor_parallel=4 does not divide the 2 GPUs "
                   "per node (LOCAL_WORLD_SIZE=2): a tensor-parallel group would cross nodes. Set it to one of [1, 2] "
                   "or launch 4 GPUs per node.\n")


def _layout_members(rank, world):
    import torch.distributed as dist

    from llm2clip_nemo.runtime import current_layout

    members = dist.get_process_group_ranks
    stage1 = init_parallel(1, megatron=False)  # caption-contrastive: no megatron, DP over every rank
    out = {"stage1": (stage1.tp_size, stage1.dp_rank, stage1.dp_size, members(stage1.dp_group),
                      members(stage1.tp_group), stage1.pg_collection, stage1.vision_pg_collection)}
    layout = init_parallel(2)  # then stage 2 in the same process: megatron state on the same ranks
    out.update({
        "coords": (layout.rank, layout.world_size, layout.tp_rank, layout.tp_size, layout.dp_rank, layout.dp_size),
        "tp": members(layout.tp_group), "dp": members(layout.dp_group), "vision_dp": members(layout.vision_dp_group),
        "teacher_pgc": {k: members(getattr(layout.pg_collection, k)) for k in ("tp", "dp")},
        "vision_pgc": {k: members(getattr(layout.vision_pg_collection, k)) for k in ("tp", "cp", "tp_cp", "pp", "dp")},
        "same_value_again": init_parallel(2) is layout and current_layout() is layout,
    })
    try:
        init_parallel(1)
    except RuntimeError as e:
        out["other_tp"] = str(e)
    return out


def test_tp2_layout_on_four_gloo_ranks_group_members():
    results = run_workers(_layout_members, 4)
    tp_groups = {0: [0, 1], 1: [0, 1], 2: [2, 3], 3: [2, 3]}
    dp_groups = {0: [0, 2], 1: [1, 3], 2: [0, 2], 3: [1, 3]}
    for r, got in enumerate(results):
        assert got["stage1"] == (1, r, 4, [0, 1, 2, 3], [r], None, None)
        assert got["coords"] == (r, 4, r % 2, 2, r // 2, 2)
        assert got["tp"] == tp_groups[r] and got["dp"] == dp_groups[r]
        assert got["vision_dp"] == [0, 1, 2, 3]
        assert got["teacher_pgc"] == {"tp": tp_groups[r], "dp": dp_groups[r]}
        # the ViT's own collection: never tensor-parallel, data-parallel over every rank
        assert got["vision_pgc"] == {"tp": [r], "cp": [r], "tp_cp": [r], "pp": [r], "dp": [0, 1, 2, 3]}
        assert got["same_value_again"] is True
        assert got["other_tp"] == ("this process already runs tensor_parallel=2, asked for 1: call "
                                   "runtime.destroy_parallel() first.")


# Reading the default group or megatron's globals outside runtime/ would bypass the layout.
FORBIDDEN = re.compile(r"group\.WORLD|parallel_state|use_mpu_process_groups|"
                       r"get_(tensor_model|data|context|pipeline_model)_parallel_(group|rank|world_size)")


# Model-side code also never asks the default group for ranks: they come with the layout.
MODEL_SIDE = ("models", "text", "vision", "eval", "data", "losses.py")
DEFAULT_GROUP_QUERY = re.compile(r"dist\.(get_world_size|get_rank|barrier)\(\)")


def _offenders(pattern: re.Pattern, keep) -> list[str]:
    return [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}"
            for p in sorted(PACKAGE.rglob("*.py")) if keep(p.relative_to(PACKAGE).parts)
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]


def test_no_module_outside_runtime_reads_the_default_group_or_megatron_globals():
    assert len(list(PACKAGE.rglob("*.py"))) > 50  # the walk sees the package
    assert _offenders(FORBIDDEN, lambda parts: "runtime" not in parts) == []
    assert _offenders(DEFAULT_GROUP_QUERY, lambda parts: parts[0] in MODEL_SIDE) == []
    # the patterns do find what they forbid: runtime/ itself builds the layout from these
    assert _offenders(FORBIDDEN, lambda parts: parts[0] == "runtime") != []


def test_doctor_finds_tp_groups_that_span_nodes():
    from llm2clip_nemo.launch.doctor import check_layout

    block = [(0, "n1", 0), (1, "n1", 1), (2, "n2", 0), (3, "n2", 1)]
    cyclic = [(0, "n1", 0), (1, "n2", 0), (2, "n1", 1), (3, "n2", 1)]  # srun --distribution=cyclic
    assert check_layout(4, 6, block, tp=2) == []
    assert check_layout(4, 6, cyclic, tp=1) == []
    assert check_layout(4, 6, cyclic, tp=2) == [
        "tensor-parallel group of ranks [0, 1] spans nodes ['n1', 'n2']: place consecutive ranks on the same node "
        "(srun --distribution=block) or lower --tensor-parallel"]
    assert check_layout(4, 6, block, tp=4)[0].startswith("tensor-parallel group of ranks [0, 1, 2, 3] spans nodes")


def test_doctor_refuses_a_tp_size_the_launch_cannot_hold(monkeypatch, capsys):
    from llm2clip_nemo.launch.doctor import main

    for k, v in {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    assert main(["--tensor-parallel", "4"]) == 1
    assert capsys.readouterr().err == (
        "doctor rank=1 FAILED: --tensor-parallel=4 does not divide the 2 GPUs per node (LOCAL_WORLD_SIZE=2): a "
        "tensor-parallel group would cross nodes. Set it to one of [1, 2] or launch 4 GPUs per node.\n")
