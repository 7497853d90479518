"""Finite training data over several ranks: every rank stops at the first rank's last batch.

In finite epoch mode (`data.resampled=false`, `data.epochs` set) the ranks' shares of the shards can
differ (3 shards over 2 ranks: 2 and 1), so one rank's loader ends while another's still has batches;
that one would then wait in a collective (gradient all-reduce, the loss's all-gather) its peer never
joins. `StopTogether` makes the ranks agree before every batch (one MIN all-reduce of a 1-element
tensor over the data-parallel group) and ends every rank's iteration together, then calls `on_end`
(the recipe stops the trainer: without it Lightning would start another, empty, epoch forever).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.distributed as dist


class StopTogether:
    """Iterable over `loader`'s batches that ends on every rank of `group` as soon as one rank's
    loader ends (then `on_end()` is called once per iteration that ended). `device`: where the agreement
    tensor lives (CPU for gloo, the rank's CUDA device for NCCL). One process (no group, or a group
    of one): no collective, the loader's own end."""

    def __init__(self, loader: Iterable, group, device: torch.device, on_end: Callable[[], None]):
        self.loader, self.group, self.device, self.on_end = loader, group, device, on_end

    def __iter__(self) -> Iterator:
        many = dist.is_available() and dist.is_initialized() and dist.get_world_size(self.group) > 1
        it = iter(self.loader)
        while True:
            batch = next(it, None)
            if many:
                flag = torch.tensor([0 if batch is None else 1], dtype=torch.int32, device=self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
                ended = int(flag.item()) == 0
            else:
                ended = batch is None
            if ended:
                self.on_end()
                return
            yield batch
