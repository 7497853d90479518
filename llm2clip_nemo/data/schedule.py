"""Which shard each reader of the training stream reads, and which source each item comes from.

Shards form pools: with `upsampling_factors` (open_clip's rule) one pool holds every shard, each
weighted by its source's factor; with `weights` (sample shares, energon's blend rule) each source
is a pool and item t of a worker comes from the pool whose slice of [0, 1) holds
frac(u + t / golden ratio) (u drawn by seed and worker, `mix_offset`): a low-discrepancy (Weyl)
sequence, so every prefix of n items holds each source's share to within O(log n / n) rather than
the O(1/sqrt n) of independent draws, whatever the shard sizes.
Per reader (a DataLoader worker of a data slot: `stream.ImageTextStream` hosts slots on ranks) each
pool reads its own sequence of shards:
  epoch mode:     the pool's epoch shard list (repeated by factor, shuffled by (seed, pool,
                  epoch)), taken [global_worker :: global_workers] so ranks and workers get
                  disjoint shards (`worker_shards`);
  resampled mode: shard j drawn with replacement by weight from Random(seed, worker, pool, j) (`draw`).
Every draw is a function of (seed, worker, pool, epoch, index), so nothing here has state to save.
"""
from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable

from .errors import data_field
from .spec import DataSourceError, Source, mixing_weights

INV_PHI = (5 ** 0.5 - 1) / 2  # 1 / golden ratio: the most evenly spread Weyl step


class ShardSchedule:
    """The shard pools of a list of sources and the seeded orders over them (see the module docstring).

    Attributes: `shards` [(url, source index)] over all sources; `shard_factor` each shard's
    upsampling factor; `weights` per-source sample shares (weights mode: one pool per source) or None
    (factor mode: one pool); `pools` the shard indices of each pool."""

    def __init__(self, sources: list[Source], seed: int, slots: int, shard_shuffle: bool = True,
                 named: Callable[[str], str] = data_field):
        """`slots`: data slots (each with one reader per DataLoader worker; see stream.ImageTextStream).
        `named`: a stream field's name as the user types it, for messages (`spec.parse_sources`)."""
        self.named = named
        self.sources, self.seed, self.slots, self.shard_shuffle = sources, seed, slots, shard_shuffle
        self.shards: list[tuple[str, int]] = [(u, s) for s, src in enumerate(sources) for u in src.urls]
        self.shard_factor = [sources[s].factor for _, s in self.shards]
        self.weights = mixing_weights(sources)
        n = len(self.shards)
        self.pools = [list(range(n))] if self.weights is None else [
            [i for i in range(n) if self.shards[i][1] == p] for p in range(len(sources))]
        self._wcum = list(itertools.accumulate(self.weights or [1.0]))
        self._cum = [list(itertools.accumulate(self.shard_factor[i] for i in pool)) for pool in self.pools]

    def _tag(self, pool: int) -> str:
        return "" if self.weights is None else f"{pool}:"  # factor mode keeps its historic seeds

    def epoch_shards(self, epoch: int, pool: int = 0) -> list[int]:
        """Epoch mode: a pool's whole epoch shard list (indices into `shards`), before splitting."""
        rng = random.Random(f"order:{self.seed}:{self._tag(pool)}{epoch}")
        order = []
        for i in self.pools[pool]:
            f = self.shard_factor[i]
            reps = math.floor(f) + (1 if rng.random() < f - math.floor(f) else 0)
            order += [i] * reps
        if self.shard_shuffle:
            rng.shuffle(order)
        return order

    def worker_shards(self, epoch: int, slot: int, worker: int, num_workers: int, pool: int = 0) -> list[int]:
        """Epoch mode: a pool's shards of one reader (data slot, worker): disjoint slices of the epoch list.

        DataSourceError when the epoch has fewer shards than slots x workers."""
        n_gw = self.slots * num_workers
        order = self.epoch_shards(epoch, pool)
        if len(order) < n_gw:
            raise DataSourceError(
                ("" if self.weights is None else f"source {self.sources[pool].spec!r}: ")
                + f"epoch {epoch} has {len(order)} shards for {self.slots} data slots (ranks) x {num_workers} workers = "
                f"{n_gw} readers: some would get none. Use fewer DataLoader workers, more (smaller) shards "
                f"(`llm2clip-nemo data build --samples-per-shard`), or {self.named('resampled')}=true"
            )
        return order[slot * num_workers + worker :: n_gw]

    def draw(self, gw: int, j: int, pool: int = 0) -> int:
        """Resampled mode: the j-th shard of global worker `gw` in `pool`, drawn by factor with replacement."""
        rng = random.Random(f"draw:{self.seed}:{gw}:{self._tag(pool)}{j}")
        return rng.choices(self.pools[pool], cum_weights=self._cum[pool])[0]

    def mix_offset(self, gw: int) -> float:
        """Weights mode: global worker `gw`'s offset u in [0, 1) of the Weyl sequence."""
        return random.Random(f"mix:{self.seed}:{gw}").random()

    def pick(self, u: float, t: int) -> int:
        """Weights mode: the pool of item t of the worker whose offset is u."""
        x = (u + t * INV_PHI) % 1.0 * self._wcum[-1]
        return min(bisect.bisect_right(self._wcum, x), len(self._wcum) - 1)
