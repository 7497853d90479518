"""`llm2clip-nemo doctor`: is my cluster wired? One line per rank, then collective checks.

Run it the way the training job will run (srun, torchrun, `llm2clip-nemo launch doctor`): it
initialises torch.distributed exactly as the recipes do (`runtime.init_distributed`), prints
where each rank landed, and checks that
  * an all_reduce of the ranks sums to world*(world-1)/2 (the group is complete and talks),
  * the gathered ranks are exactly 0..world-1 and every (node, local rank) pair is unique
    (no two processes think they own the same GPU),
  * with `--tensor-parallel T`: T fits the launch (`runtime.check_tp`: divides the world and the
    GPUs per node the launcher reports, checked before the rendezvous) and every group of T
    consecutive ranks, the teacher's TP group, really sits on one node (a cyclic task
    distribution would put them on several, which the launcher's counts cannot show).
Exit status 0 when all hold, 1 otherwise (the failing check is printed by every rank).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

from ..config.cli_args import verb_parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = verb_parser("doctor", description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                   help="process-group backend (default: nccl with CUDA, gloo otherwise)")
    p.add_argument("--timeout-min", type=int, default=5,
                   help="rendezvous/collective timeout in minutes (a missing rank fails after this)")
    p.add_argument("--tensor-parallel", type=int, default=1,
                   help="teacher TP size the job will use: check that each group of that many ranks is on one node")
    return p.parse_args(argv)


def check_layout(world: int, rank_sum: int, gathered: list[tuple[int, str, int]], tp: int = 1) -> list[str]:
    """Problems with what the ranks reported: [(rank, node, local_rank), ...] from all ranks; `tp`:
    the tensor-parallel size whose groups of consecutive ranks must each sit on one node."""
    problems = []
    expected = world * (world - 1) // 2
    if rank_sum != expected:
        problems.append(f"all_reduce of ranks gave {rank_sum}, expected {expected} for world size {world}")
    ranks = sorted(r for r, _, _ in gathered)
    if ranks != list(range(world)):
        problems.append(f"ranks reported {ranks}, expected 0..{world - 1} once each")
    slots = [(node, lr) for _, node, lr in gathered]
    dup = sorted({s for s in slots if slots.count(s) > 1})
    if dup:
        problems.append(f"(node, local_rank) claimed by several ranks: {dup}")
    node_of = {r: node for r, node, _ in gathered}
    for start in range(0, world if tp > 1 else 0, tp):
        group = list(range(start, min(start + tp, world)))
        nodes = sorted({node_of.get(r, "?") for r in group})
        if len(nodes) > 1:
            problems.append(f"tensor-parallel group of ranks {group} spans nodes {nodes}: place consecutive ranks "
                            "on the same node (srun --distribution=block) or lower --tensor-parallel")
            break
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    import torch
    import torch.distributed as dist

    from ..runtime import DistEnv, LayoutError, check_tp, init_distributed, processes_per_node

    torch.set_num_threads(1)
    env = DistEnv.from_environ()
    try:  # before the rendezvous: every rank fails alike, none waits for the others
        per_node, source = processes_per_node(env)
        check_tp(args.tensor_parallel, env.world_size, per_node, "--tensor-parallel", source)
    except LayoutError as e:
        print(f"doctor rank={env.rank} FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    # Simulated SLURM nodes share one host name; the node name SLURM gave this task tells them apart.
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    init_distributed(env, backend=args.backend, timeout_min=args.timeout_min)
    try:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor([env.rank], dtype=torch.int64, device=device)
        dist.all_reduce(t)
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (env.rank, node, env.local_rank))
        print(
            f"doctor rank={env.rank} local_rank={env.local_rank} world={dist.get_world_size()} "
            f"host={socket.gethostname()} node={node} master={env.master_addr}:{env.master_port} "
            f"launcher={env.launcher} backend={dist.get_backend()} rank_sum={int(t.item())}",
            flush=True,
        )
        problems = check_layout(dist.get_world_size(), int(t.item()), gathered, args.tensor_parallel)
        for p in problems:
            print(f"doctor rank={env.rank} FAILED: {p}", file=sys.stderr, flush=True)
        if env.rank == 0 and not problems:
            nodes = sorted({n for _, n, _ in gathered})
            tp = f"; tensor_parallel={args.tensor_parallel} groups each on one node" if args.tensor_parallel > 1 else ""
            print(f"doctor OK: {len(gathered)} ranks on {len(nodes)} node(s) {','.join(nodes)}{tp}", flush=True)
        dist.barrier()
        return 1 if problems else 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
