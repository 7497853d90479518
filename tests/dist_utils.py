"""Run a function on N real processes joined by a gloo process group (torch.distributed)."""
from __future__ import annotations

import io
import os
import traceback

import torch.multiprocessing as mp

from llm2clip_nemo.runtime.parallel import free_port


def _worker(rank, world_size, port, fn, args, queue):
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    )
    import torch

    torch.set_num_threads(1)
    try:
        # Serialise tensors into bytes: torch's shared-memory handles die with this process, and it
        # may exit before the parent has read them.
        buf = io.BytesIO()
        torch.save(fn(rank, world_size, *args), buf)
        queue.put((rank, "ok", buf.getvalue()))
    except BaseException:  # report any failure to the parent, with its traceback
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                from llm2clip_nemo.runtime import destroy_parallel

                destroy_parallel()
            except Exception:
                pass


def run_workers(fn, world_size: int, *args, timeout: float = 600.0) -> list:
    """Run `fn(rank, world_size, *args)` in `world_size` spawned processes; return results by rank.

    `fn` must be importable (module level). Each worker's environment carries torchrun-style
    variables, so `runtime.init_parallel()` inside it joins the group.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, args, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, []
    try:
        for _ in range(world_size):
            rank, status, value = queue.get(timeout=timeout)
            if status == "ok":
                import torch

                results[rank] = torch.load(io.BytesIO(value), weights_only=False)
            else:
                errors.append(f"rank {rank}:\n{value}")
                break
    finally:
        for p in procs:
            p.join(timeout=5 if errors else 60)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError("distributed worker failed\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]
