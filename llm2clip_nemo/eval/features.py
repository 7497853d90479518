"""Data-parallel feature extraction: each rank encodes a shard of the items, all ranks get all
features back in the original order.

The gather pads every rank's rows to the longest shard (all_gather needs equal shapes) and
all-gathers each rank's row count, feature dim and dtype first, so ranks with fewer items, or
none at all (fewer items than ranks), still take part and the padding is cut off exactly.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def shard_indices(n: int, rank: int, world: int, layout: str = "contiguous") -> list[int]:
    """The item indices rank `rank` of `world` encodes.

    contiguous: consecutive blocks of ceil(n / world) (neighbouring items, e.g. one shard file,
    stay on one rank); strided: rank, rank + world, ... (balances items sorted by size).
    """
    if layout == "contiguous":
        per = -(-n // world)
        return list(range(min(rank * per, n), min((rank + 1) * per, n)))
    if layout == "strided":
        return list(range(rank, n, world))
    raise ValueError(f"layout={layout!r}: choose 'contiguous' or 'strided'.")


def _encode(items: Sequence, idx: list[int], batch_fn: Callable[[list], torch.Tensor], batch_size: int,
            progress: Callable[[int, int], None] | None) -> torch.Tensor | None:
    out = []
    for b0 in range(0, len(idx), batch_size):
        batch = [items[i] for i in idx[b0:b0 + batch_size]]
        feats = batch_fn(batch)
        if feats.dim() != 2 or feats.shape[0] != len(batch):
            raise ValueError(f"batch_fn returned shape {tuple(feats.shape)} for {len(batch)} items; "
                             "it must return [len(batch), dim].")
        out.append(feats.detach())
        if progress is not None:
            progress(min(b0 + batch_size, len(idx)), len(idx))
    return torch.cat(out) if out else None


def _comm_device(group) -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def extract_features(items: Sequence, batch_fn: Callable[[list], torch.Tensor], batch_size: int = 64,
                     group=None, layout: str = "contiguous",
                     progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Encode `items` with `batch_fn(list_of_items) -> [len, D]`, spread over the ranks of `group`.

    group=None encodes everything in this process. With a group, rank r encodes
    `shard_indices(len(items), r, world, layout)` and the result, identical on every rank, is the
    [len(items), D] tensor in item order (on the communication device: CUDA under NCCL, else CPU).
    `progress(done, total)` is called after each local batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    n = len(items)
    if group is None:
        feats = _encode(items, list(range(n)), batch_fn, batch_size, progress)
        if feats is None:
            raise ValueError("no items to encode.")
        return feats
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    idx = shard_indices(n, rank, world, layout)
    local = _encode(items, idx, batch_fn, batch_size, progress)
    dev = _comm_device(group)
    if local is not None and local.dtype not in _DTYPES:
        raise ValueError(f"batch_fn returned dtype {local.dtype}; use one of {_DTYPES}.")
    meta = torch.tensor([len(idx), -1 if local is None else local.shape[1],
                         -1 if local is None else _DTYPES.index(local.dtype)], dtype=torch.long, device=dev)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta, group=group)
    metas = torch.stack(metas).cpu()
    lengths = metas[:, 0].tolist()
    if sum(lengths) != n:
        raise RuntimeError(f"ranks encoded {lengths} items, {sum(lengths)} in all, for {n} items: "
                           "every rank must pass the same item list.")
    given = metas[metas[:, 0] > 0]
    if given.numel() == 0:
        raise ValueError("no items to encode.")
    if len(set(given[:, 1].tolist())) != 1 or len(set(given[:, 2].tolist())) != 1:
        raise RuntimeError(f"ranks returned different feature shapes/dtypes: (dim, dtype code) per rank "
                           f"{given[:, 1:].tolist()}.")
    dim, dtype = int(given[0, 1]), _DTYPES[int(given[0, 2])]
    longest = max(lengths)
    padded = torch.zeros(longest, dim, dtype=dtype, device=dev)
    if local is not None:
        padded[: local.shape[0]] = local.to(dev)
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded, group=group)
    out = torch.empty(n, dim, dtype=dtype, device=dev)
    for r, piece in enumerate(pieces):
        out[shard_indices(n, r, world, layout)] = piece[: lengths[r]]
    return out
