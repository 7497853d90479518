"""`llm2clip-nemo doctor`: is my cluster wired? One line per rank, then collective checks.

Run it the way the training job will run (srun, torchrun, `llm2clip-nemo launch doctor`): it
initialises torch.distributed exactly as the recipes do (`runtime.init_distributed`), prints
where each rank landed, and checks that
  * an all_reduce of the ranks sums to world*(world-1)/2 (the group is complete and talks),
  * the gathered ranks are exactly 0..world-1 and every (node, local rank) pair is unique
    (no two processes think they own the same GPU).
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
    return p.parse_args(argv)


def check_layout(world: int, rank_sum: int, gathered: list[tuple[int, str, int]]) -> list[str]:
    """Problems with what the ranks reported: [(rank, node, local_rank), ...] from all ranks."""
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
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    import torch
    import torch.distributed as dist

    from ..runtime.dist_env import DistEnv
    from ..runtime.parallel import init_distributed

    torch.set_num_threads(1)
    env = DistEnv.from_environ()
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
        problems = check_layout(dist.get_world_size(), int(t.item()), gathered)
        for p in problems:
            print(f"doctor rank={env.rank} FAILED: {p}", file=sys.stderr, flush=True)
        if env.rank == 0 and not problems:
            nodes = sorted({n for _, n, _ in gathered})
            print(f"doctor OK: {len(gathered)} ranks on {len(nodes)} node(s) {','.join(nodes)}", flush=True)
        dist.barrier()
        return 1 if problems else 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
