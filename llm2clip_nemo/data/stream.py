"""The training stream over image-text shards: mixing, splitting, shuffling, exact resumption.

Which shard each (rank, DataLoader worker) reads and which source each item comes from is
`schedule.ShardSchedule` (factor pools or weighted pools mixed by a Weyl sequence; epoch or
resampled shard orders). With weights each source runs its own epochs (a small source starts its
next pass while a large one is mid-pass) and `epochs` ends the stream when the first source
completes that many passes.
The stream keeps `open_shards` shards per pool open, interleaves them at random into windows of
`shuffle_buffer` items, permutes each window and yields batches (`stream_samples.SampleMaker` turns
items into samples and samples into batches, counting skips). All randomness is a function of
counters (seed, worker, epoch, window, item), so a position is a handful of integers
(`stream_state`), and resuming means reopening the listed shards at their offsets, re-reading one
window and skipping the `done` items already delivered. Every batch carries its worker's position
in `batch["stream_state"]`; the main process keeps the latest per worker (`track`), which is what
`state_dict()` saves.
"""
from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .config import OUTPUTS, StreamConfig
from .schedule import ShardSchedule
from .spec import DataSourceError, parse_sources
from .stream_samples import SampleMaker, SkipLog
from .stream_state import StreamTracker, start_pos
from .tario import RawSample


class ImageTextStream(IterableDataset):
    """Iterable of batches (dicts) over image-text shards; see the module docstring.

    Batch keys: "image" float32 [B,3,S,S] (normalised), "key" list[str], "caption" list[str],
    "caption_field" list[str], "source" list[int], "url" list[str], "stream_state" dict;
    output="captions" (the online teacher prepares them by its contract) adds nothing;
    output="embeddings" adds "teacher_emb" float32 [B,dim].
    caption_sampling="all" adds "captions" list[list[str]] [B][K] (K = fields with weight > 0, in
    caption_fields order; "" where absent) and "caption_mask" bool [B,K], and teacher_emb is [B,K,dim]
    (zero rows where absent); "caption"/"caption_field" then hold each sample's first present field.
    Use with `DataLoader(stream, batch_size=None, num_workers=N)` or `stream.loader(N)`.
    """

    def __init__(self, cfg: StreamConfig, rank: int = 0, world_size: int = 1, *, output: str = "captions",
                 teacher_fingerprint: str | None = None, teacher_dim: int | None = None):
        """`output`, `teacher_fingerprint` and `teacher_dim` are the run's, not the user's: the model
        passes them (`output` from its teacher mode; for 'embeddings', sidecars of another teacher
        fingerprint or embedding size are refused, None skipping that check). ValueError for a bad
        `output` or rank."""
        cfg.validate()
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r} must be one of {OUTPUTS}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.cfg, self.rank, self.world_size, self.output = cfg, rank, world_size, output
        self.sources = parse_sources(cfg.urls, cfg.upsampling_factors, cfg.check_paths, cfg.weights, cfg.blend)
        self.schedule = ShardSchedule(self.sources, cfg.seed, world_size, cfg.shard_shuffle)
        self.weights = self.schedule.weights
        """Per-source sample shares (weights mode: one pool per source), None (factor mode: one pool)."""
        self.maker = SampleMaker(cfg, self.sources, output, teacher_fingerprint, teacher_dim)
        self.tracker = StreamTracker()
        """Main-process view of consumed batches (see track / state_dict)."""

    # ---- one worker's item sequence ----------------------------------------------------------
    def _items(self, lw: int, nw: int, pos: dict, stats: dict) -> Iterator[tuple[dict | None, dict]]:
        """Yield (sample or None, position after it) forever or until the last epoch ends."""
        cfg = self.cfg
        gw = self.rank * nw + lw
        sched = self.schedule
        multi = self.weights is not None
        u = sched.mix_offset(gw)  # weights mode: this worker's offset in the Weyl sequence
        skiplog = SkipLog(cfg.log_first, cfg.log_interval_s, gw)
        sidecars: dict = {}  # url -> open SidecarReader
        pos = copy.deepcopy(pos)
        # Per pool: [list index, offset, generator, shard] of its open shards; reopened from `pos` on (re)start.
        opened: list[list[list]] = [[] for _ in sched.pools]
        opened_at = None
        orders: dict[tuple[int, int], list[int]] = {}  # (pool, epoch) -> this worker's shard list

        def order(p: int, epoch: int) -> list[int] | None:
            if cfg.resampled:
                return None
            if (p, epoch) not in orders:
                for k in [k for k in orders if k[0] == p]:
                    del orders[k]
                orders[(p, epoch)] = sched.worker_shards(epoch, self.rank, lw, nw, p)
            return orders[(p, epoch)]

        try:
            while True:
                epoch = pos["epoch"]
                if not cfg.resampled and cfg.epochs is not None and epoch >= cfg.epochs:
                    return
                if opened_at != (epoch, pos["window"]):
                    for o in itertools.chain.from_iterable(opened):
                        o[2].close()
                    opened = [[self._open(order(p, pp["epoch"]), gw, p, oi, off) for oi, off in pp["open"]]
                              for p, pp in enumerate(pos["pools"])]
                rng = random.Random(f"win:{cfg.seed}:{gw}:{epoch}:{pos['window']}")
                pools = [{"epoch": pp["epoch"], "next": pp["next"]} for pp in pos["pools"]]
                items: list[tuple[RawSample, int]] = []
                last_window = False
                t0 = pos["window"] * cfg.shuffle_buffer  # weights mode: windows are full until the last one
                fresh = [False] * len(pools)  # pool just started a pass: it must yield before it may end again
                while len(items) < cfg.shuffle_buffer and not last_window:
                    p = sched.pick(u, t0 + len(items)) if multi else 0
                    got = self._pull(p, pools[p], opened[p], order(p, pools[p]["epoch"]), gw, rng)
                    if got is not None:
                        items.append(got)
                        fresh[p] = False
                        continue
                    if not multi:
                        break  # the epoch ended for this worker
                    if fresh[p]:
                        raise DataSourceError(f"source {self.sources[p].spec!r} holds no samples for reader {gw}: "
                                              f"its shards are empty; drop it from data.urls")
                    pools[p] = {"epoch": pools[p]["epoch"] + 1, "next": 0}  # this source's pass ended: next pass
                    opened[p], fresh[p] = [], True
                    last_window = cfg.epochs is not None and pools[p]["epoch"] >= cfg.epochs
                end = {"epoch": max(pp["epoch"] for pp in pools),
                       "pools": [{**pp, "open": [[o[0], o[1]] for o in op]} for pp, op in zip(pools, opened)],
                       "window": pos["window"] + 1, "done": 0}
                if not items and not multi:  # epoch finished for this worker
                    self.maker.check_sources(stats, final=True)
                    pos = start_pos(1, epoch + 1)
                    opened, opened_at = [[]], None
                    continue
                rng.shuffle(items)
                opened_at = (end["epoch"], end["window"])
                for j in range(pos["done"], len(items)):
                    item, shard = items[j]
                    srng = random.Random(f"s:{cfg.seed}:{gw}:{epoch}:{pos['window']}:{j}")
                    sample = self.maker.process(item, sched.shards[shard][1], srng, stats, skiplog, sidecars)
                    after = end if j + 1 == len(items) else {**pos, "done": j + 1}
                    yield sample, after
                if last_window:
                    self.maker.check_sources(stats, final=True)
                pos = end
        finally:
            for o in itertools.chain.from_iterable(opened):
                o[2].close()
            for r in sidecars.values():
                r.close()

    def _pull(self, p: int, pp: dict, opened: list, order: list[int] | None, gw: int, rng: random.Random):
        """The next (item, shard) of pool p from one of its open shards picked at random, opening
        shards as needed; None when the pool's pass is over (epoch mode)."""
        while True:
            while len(opened) < self.cfg.open_shards and (order is None or pp["next"] < len(order)):
                opened.append(self._open(order, gw, p, pp["next"], 0))
                pp["next"] += 1
            if not opened:
                return None
            k = rng.randrange(len(opened))
            o = opened[k]
            item = next(o[2], None)
            if item is None:
                opened.pop(k)
                continue
            o[1] += 1
            return item, o[3]

    def _open(self, order, gw: int, p: int, oi: int, offset: int) -> list:
        """[list index, item offset, sample generator, shard index] for the oi-th shard of pool p's list."""
        shard = self.schedule.draw(gw, oi, p) if order is None else order[oi]
        url, src = self.schedule.shards[shard]
        return [oi, offset, self.sources[src].read(url, start=offset), shard]

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        nw, pw = (info.num_workers, info.id) if info is not None else (1, 0)
        lw, pos, stats = self.tracker.resume_point(pw, nw, len(self.schedule.pools), len(self.sources))
        # A finished batch is held until the next sample arrives, so that a worker's last batch can
        # carry the final position and skip counts (items after its last sample included).
        buf: list[dict] = []
        held = None
        last = pos
        for sample, after in self._items(lw, nw, pos, stats):
            last = after
            if sample is None:
                continue
            if held is not None:
                yield self._emit(held, lw, nw, info is None)
                held = None
            buf.append(sample)
            if len(buf) == self.cfg.batch_size:
                held = (buf, after, copy.deepcopy(stats))
                buf = []
        if held is not None:
            yield self._emit((held[0], last if not buf else held[1], stats if not buf else held[2]), lw, nw, info is None)
        if buf and not self.cfg.drop_last:
            yield self._emit((buf, last, stats), lw, nw, info is None)

    def _emit(self, held, lw: int, nw: int, in_process: bool) -> dict:
        buf, pos, stats = held
        batch = self.maker.collate(buf, {"worker": lw, "num_workers": nw, "rank": self.rank,
                                         "position": pos, "stats": stats})
        if in_process:
            self.track(batch)
        return batch

    # ---- position in the main process --------------------------------------------------------
    def track(self, batch: dict) -> None:
        """Record a consumed batch's worker position (the loader from `loader()` calls this)."""
        self.tracker.track(batch)

    def _identity(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "seed": self.cfg.seed, "urls": self.cfg.urls,
                "weights": self.weights, "upsampling_factors": self.cfg.upsampling_factors}

    def state_dict(self) -> dict:
        """This rank's position: epoch, per-worker shard index and item offset, whose turn is next.

        RNG state needs no saving: every draw is seeded by (seed, worker, epoch, window, item)."""
        return self.tracker.state_dict(self._identity())

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; version 1 states (before pools; factor mode only) are upgraded,
        and resume exactly: factor mode's sequences did not change. ValueError for an unknown version;
        DataSourceError when the state's rank, world size, seed, urls, weights or factors differ."""
        self.tracker.load_state_dict(state, self._identity())

    def summary(self) -> dict:
        """Totals over this rank's workers: samples per source ("valid", "raw"), the achieved "share" of
        valid samples per source and the "target" share (weights mode; None in factor mode), skips by
        reason, caption field counts."""
        return self.tracker.summary(len(self.sources), self.weights)

    def summary_text(self) -> str:
        """One line for logs: samples per source, skips by reason, caption fields."""
        s = self.summary()
        tgt = s["target"] or [None] * len(self.sources)
        per_src = ", ".join(f"{src.spec}: {v}/{r} (share {sh:.3f}" + ("" if t is None else f", target {t:.3f}") + ")"
                            for src, v, r, sh, t in zip(self.sources, s["valid"], s["raw"], s["share"], tgt))
        return (f"data: epoch {s['epoch']}; valid/read per source: {per_src}; skipped: {s['skipped'] or 'none'}; "
                f"caption fields: {s['fields']}")

    def loader(self, num_workers: int = 2, **kw) -> TrackedLoader:
        """A `TrackedLoader` over this stream with `num_workers` DataLoader workers (kw go to DataLoader)."""
        return TrackedLoader(self, num_workers=num_workers, **kw)


class TrackedLoader:
    """A DataLoader over the stream whose consumed batches update the stream's position.

    Workers are not persistent on purpose: each new iteration re-sends the stream (with the tracked
    position) to fresh workers, so batches prefetched but never consumed are produced again."""

    def __init__(self, stream: ImageTextStream, num_workers: int = 2, **kw):
        self.stream = stream
        kw.setdefault("prefetch_factor", 2 if num_workers > 0 else None)
        self.loader = DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=False, **kw)

    def __iter__(self):
        for batch in self.loader:
            self.stream.track(batch)
            yield batch


