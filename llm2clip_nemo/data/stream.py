"""The training stream over image-text shards: mixing, splitting, shuffling, exact resumption.

The global batch is cut into `data.slots` equal parts (default: the world size), and each part is
read by its own row of readers, one per DataLoader worker: reader (slot, worker) is global reader
slot * num_workers + worker, whatever process hosts it. Rank r of W reads slots [r*k, (r+1)*k),
k = slots / W, and its batch is their parts concatenated in slot order, so the global batch (ranks
gathered in rank order) is the same sequence of samples at every world size dividing the slot count,
and a position saved at one such world size resumes exactly at another (`load_state_dicts`).
Which shard each reader reads and which source each item comes from is
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
in `batch["stream_state"]`; the main process keeps the latest per reader (`track`), which is what
`state_dict()` saves.
"""
from __future__ import annotations

import copy
import functools
import itertools
import random
from collections.abc import Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config.paths import field_path
from .config import OUTPUTS, StreamConfig
from .schedule import ShardSchedule
from .spec import DataSourceError, parse_sources
from .stream_samples import SampleMaker, SkipLog
from .stream_state import StreamTracker, merge_states, start_pos, upgrade
from .tario import RawSample


class ImageTextStream(IterableDataset):
    """Iterable of batches (dicts) over image-text shards; see the module docstring.

    Batch keys: "image" float32 [B,3,S,S] (normalised), "key" list[str], "caption" list[str],
    "caption_field" list[str], "source" list[int], "url" list[str], "stream_state" dict;
    output="captions" (the online teacher prepares them by its contract) adds nothing;
    output="embeddings" adds "teacher_emb" float32 [B,dim].
    Each batch holds `cfg.batch_size` samples: cfg.batch_size / k from each of this rank's k slots.
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
        `output` or rank; DataSourceError when data.slots is not a multiple of `world_size` or the
        batch does not split evenly over the rank's slots."""
        cfg.validate()
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r} must be one of {OUTPUTS}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.cfg, self.rank, self.world_size, self.output = cfg, rank, world_size, output
        self.named = functools.partial(field_path, cfg)
        """A field of `cfg` as the user types it ('model.train_ds.slots'), for messages (`config.paths`)."""
        self.sources = parse_sources(cfg.urls, cfg.upsampling_factors, cfg.check_paths, cfg.weights, cfg.blend,
                                     named=self.named)
        self._plan(cfg.slots or world_size)
        self.weights = self.schedule.weights
        """Per-source sample shares (weights mode: one pool per source), None (factor mode: one pool)."""
        self.maker = SampleMaker(cfg, self.sources, output, teacher_fingerprint, teacher_dim)
        self.tracker = StreamTracker()
        """Main-process view of consumed batches (see track / state_dict)."""

    def _plan(self, slots: int, saved: bool = False) -> None:
        """Host data slots [rank*k, (rank+1)*k), k = slots / world size, each giving batch_size / k samples.
        `saved`: the slot count is a checkpoint's (the refusal then says how to continue it)."""
        if slots % self.world_size and not saved:
            raise DataSourceError(
                f"{self.named('slots')}={slots} is not a multiple of the world size {self.world_size}: set it to a "
                f"multiple of {self.world_size}, or leave it unset (one slot per rank)")
        if slots % self.world_size:
            fits = [d for d in range(1, slots + 1) if slots % d == 0]
            raise DataSourceError(
                f"the checkpoint's data stream has {slots} data slot{'s' if slots > 1 else ''}, which "
                f"{self.world_size} ranks cannot share evenly: run at a world size dividing {slots} "
                f"({', '.join(map(str, fits))}) to continue it exactly, or set {self.named('slots')} to a multiple "
                f"of {self.world_size} to start the data stream afresh")
        k = slots // self.world_size
        if self.cfg.batch_size % k:
            raise DataSourceError(
                f"the per-rank batch of {self.cfg.batch_size} does not split into the {k} data slots each rank reads "
                f"({slots} slots over {self.world_size} ranks): use a global batch divisible by {slots} x the "
                f"micro-batches per step (trainer.accumulate_grad_batches)")
        self.slots, self.hosted, self.slot_batch = slots, list(range(self.rank * k, (self.rank + 1) * k)), self.cfg.batch_size // k
        self.schedule = ShardSchedule(self.sources, self.cfg.seed, slots, self.cfg.shard_shuffle, named=self.named)

    # ---- one reader's item sequence ----------------------------------------------------------
    def _items(self, slot: int, lw: int, nw: int, pos: dict, stats: dict) -> Iterator[tuple[dict | None, dict]]:
        """Yield (sample or None, position after it) forever or until the last epoch ends."""
        cfg = self.cfg
        gw = slot * nw + lw
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
                orders[(p, epoch)] = sched.worker_shards(epoch, slot, lw, nw, p)
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
                                              f"its shards are empty; drop it from {self.named('urls')}")
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

    def _slot_batches(self, slot: int, lw: int, nw: int, pos: dict, stats: dict) -> Iterator[tuple[list, dict, dict]]:
        """One reader's batch parts: (samples, position after the part, counts)."""
        # A finished part is held until the next sample arrives, so that a reader's last part can
        # carry the final position and skip counts (items after its last sample included).
        buf: list[dict] = []
        held = None
        last = pos
        for sample, after in self._items(slot, lw, nw, pos, stats):
            last = after
            if sample is None:
                continue
            if held is not None:
                yield held
                held = None
            buf.append(sample)
            if len(buf) == self.slot_batch:
                held = (buf, after, copy.deepcopy(stats))
                buf = []
        if held is not None:
            yield (held[0], last if not buf else held[1], stats if not buf else held[2])
        if buf and not self.cfg.drop_last:
            yield (buf, last, stats)

    def __iter__(self) -> Iterator[dict]:
        """Batches of this rank: one part per hosted slot, in slot order; ends when the first slot's
        readers end (finite epoch mode)."""
        info = get_worker_info()
        nw, pw = (info.num_workers, info.id) if info is not None else (1, 0)
        lw = self.tracker.first_worker(pw, nw)
        n_pools, n_src = len(self.schedule.pools), len(self.sources)
        parts = [self._slot_batches(s, lw, nw, *self.tracker.resume_point(s, lw, n_pools, n_src)) for s in self.hosted]
        for got in zip(*parts):
            state = {"worker": lw, "num_workers": nw, "rank": self.rank,
                     "slots": {s: {"position": pos, "stats": stats} for s, (_, pos, stats) in zip(self.hosted, got)}}
            batch = self.maker.collate([x for samples, _, _ in got for x in samples], state)
            if info is None:
                self.track(batch)
            yield batch

    # ---- position in the main process --------------------------------------------------------
    def track(self, batch: dict) -> None:
        """Record a consumed batch's worker position (the loader from `loader()` calls this)."""
        self.tracker.track(batch)

    def _identity(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "seed": self.cfg.seed, "urls": self.cfg.urls,
                "weights": self.weights, "upsampling_factors": self.cfg.upsampling_factors}

    def state_dict(self) -> dict:
        """This rank's position (`stream_state`, version 3): per reader of its slots the epoch, shard
        index and item offset, and whose turn is next.

        RNG state needs no saving: every draw is seeded by (seed, reader, epoch, window, item)."""
        return self.tracker.state_dict(self._identity(), self.slots, self.hosted)

    def load_state_dict(self, state: dict) -> bool:
        """Restore a `state_dict()` that holds this rank's slots (at the world size that saved it, or a
        merged one); versions 1 and 2 are upgraded and resume exactly. With data.slots unset the saved
        slot count is taken (re-planning which slots this rank reads); with data.slots set to another
        count the stream starts afresh. Returns whether the position was restored. DataSourceError for an
        unknown version, or when the seed, urls, weights or factors differ, the world size
        does not divide the saved slot count, or the state lacks one of this rank's slots."""
        state = upgrade(state)
        if state["slots"] != self.slots:
            if self.cfg.slots is not None:
                return False
            self._plan(state["slots"], saved=True)
        self.tracker.load_state_dict(state, self._identity(), self.hosted)
        return True

    def load_state_dicts(self, states: list[dict]) -> bool:
        """Restore from every rank's `state_dict()` of one checkpoint (`stream_state.merge_states`), at any
        world size dividing their slot count (e.g. the states of 2 ranks on 1 rank: it then reads both
        slots). Returns and raises as `load_state_dict`."""
        return self.load_state_dict(merge_states(states))

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


