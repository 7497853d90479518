"""The training stream over image-text shards: mixing, splitting, shuffling, exact resumption.

Shards form pools: with `upsampling_factors` (open_clip's rule) one pool holds every shard, each
weighted by its source's factor; with `weights` (sample shares, energon's blend rule) each source
is a pool and item t of a worker comes from the pool whose slice of [0, 1) holds
frac(u + t / golden ratio) (u drawn by seed and worker): a low-discrepancy (Weyl) sequence, so
every prefix of n items holds each source's share to within O(log n / n) rather than the
O(1/sqrt n) of independent draws, whatever the shard sizes; windows are shuffled as before.
Per DataLoader worker (and rank) each pool reads its own sequence of shards:
  epoch mode:     the pool's epoch shard list (repeated by factor, shuffled by (seed, pool,
                  epoch)), taken [global_worker :: global_workers] so ranks and workers get
                  disjoint shards; with weights each source runs its own epochs (a small source
                  starts its next pass while a large one is mid-pass) and `epochs` ends the stream
                  when the first source completes that many passes;
  resampled mode: shard j drawn with replacement by weight from Random(seed, worker, pool, j).
It keeps `open_shards` shards per pool open, interleaves them at random into windows of
`shuffle_buffer` items, permutes each window and yields batches. All randomness is a function of
counters (seed, worker, epoch, window, item), so a position is a handful of integers:
  {"epoch", "pools": [{"epoch", "next" (shard-list index), "open": [[list index, item offset], ...]}],
   "window", "done"}
and resuming means reopening the listed shards at their offsets, re-reading one window and
skipping the `done` items already delivered. Every batch carries its worker's position in
`batch["stream_state"]`; the main process keeps the latest per worker (`track`), which is what
`state_dict()` saves. DataLoader hands out batches round-robin over workers, so the state also
records whose turn is next and a resumed loader starts at that worker.
"""
from __future__ import annotations

import bisect
import copy
import io
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .captions import CaptionPolicy
from .config import OUTPUTS, StreamConfig
from .images import ImageDecodeError, decode_image
from .samples import check_sample
from .sidecar import SidecarReader, sidecar_path
from .spec import DataSourceError, mixing_weights, parse_sources
from .tario import IMAGE_EXTS, RawSample
from .transforms import ImageTransform, normalize_batch, to_uint8_batch

log = logging.getLogger("llm2clip_nemo.data")
STATE_VERSION = 2
_INV_PHI = (5 ** 0.5 - 1) / 2  # 1 / golden ratio: the most evenly spread Weyl step


class NoValidSamplesError(DataSourceError):
    """A source produced items but not a single usable sample."""


def _empty_stats(n_sources: int) -> dict:
    return {"skipped": {}, "fields": {}, "valid": [0] * n_sources, "raw": [0] * n_sources}


def _start_pos(n_pools: int, epoch: int = 0) -> dict:
    return {"epoch": epoch, "pools": [{"epoch": epoch, "next": 0, "open": []} for _ in range(n_pools)],
            "window": 0, "done": 0}


class _SkipLog:
    """Log the first few skips per reason in full, then periodic totals: bounded, never spammy."""

    def __init__(self, first: int, interval_s: float, worker: int):
        self.first, self.interval, self.worker = first, interval_s, worker
        self.seen: dict[str, int] = {}
        self.last = time.monotonic()

    def __call__(self, reason: str, where: str, stats: dict) -> None:
        n = self.seen[reason] = self.seen.get(reason, 0) + 1
        if n <= self.first:
            log.warning("data: skipped sample (%s) at %s%s", reason, where,
                        "; further skips of this kind are only counted" if n == self.first else "")
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            log.warning("data worker %d: skipped so far %s", self.worker, stats["skipped"])


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
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.output, self.teacher_fingerprint, self.teacher_dim = output, teacher_fingerprint, teacher_dim
        self.sources = parse_sources(cfg.urls, cfg.upsampling_factors, cfg.check_paths, cfg.weights, cfg.blend)
        self.shards: list[tuple[str, int]] = [(u, s) for s, src in enumerate(self.sources) for u in src.urls]
        self.shard_factor = [self.sources[s].factor for _, s in self.shards]
        self.weights = mixing_weights(self.sources)
        """Per-source sample shares (weights mode: one pool per source), None (factor mode: one pool)."""
        n = len(self.shards)
        self.pools = [list(range(n))] if self.weights is None else [
            [i for i in range(n) if self.shards[i][1] == p] for p in range(len(self.sources))]
        self._wcum = list(itertools.accumulate(self.weights or [1.0]))
        self._cum = [list(itertools.accumulate(self.shard_factor[i] for i in pool)) for pool in self.pools]
        self.policy = CaptionPolicy(dict(cfg.caption_fields))
        self.transform = ImageTransform(cfg.transform)
        # Main-process view of consumed batches (see track / state_dict).
        self._positions: dict[int, dict] = {}
        self._stats: dict[int, dict] = {}
        self._num_workers: int | None = None
        self._next_worker = 0

    # ---- shard order -------------------------------------------------------------------------
    def _tag(self, pool: int) -> str:
        return "" if self.weights is None else f"{pool}:"  # factor mode keeps its historic seeds

    def epoch_shards(self, epoch: int, pool: int = 0) -> list[int]:
        """Epoch mode: a pool's whole epoch shard list (indices into self.shards), before splitting."""
        rng = random.Random(f"order:{self.cfg.seed}:{self._tag(pool)}{epoch}")
        order = []
        for i in self.pools[pool]:
            f = self.shard_factor[i]
            reps = math.floor(f) + (1 if rng.random() < f - math.floor(f) else 0)
            order += [i] * reps
        if self.cfg.shard_shuffle:
            rng.shuffle(order)
        return order

    def worker_shards(self, epoch: int, rank: int, worker: int, num_workers: int, pool: int = 0) -> list[int]:
        """Epoch mode: a pool's shards of one (rank, worker): disjoint slices of the epoch list."""
        n_gw = self.world_size * num_workers
        order = self.epoch_shards(epoch, pool)
        if len(order) < n_gw:
            raise DataSourceError(
                ("" if self.weights is None else f"source {self.sources[pool].spec!r}: ")
                + f"epoch {epoch} has {len(order)} shards for {self.world_size} ranks x {num_workers} workers = {n_gw} "
                f"readers: some would get none. Use fewer DataLoader workers, more (smaller) shards "
                f"(`llm2clip-nemo data build --samples-per-shard`), or data.resampled=true"
            )
        return order[rank * num_workers + worker :: n_gw]

    def _draw(self, gw: int, j: int, pool: int = 0) -> int:
        rng = random.Random(f"draw:{self.cfg.seed}:{gw}:{self._tag(pool)}{j}")
        return rng.choices(self.pools[pool], cum_weights=self._cum[pool])[0]

    # ---- one worker's item sequence ----------------------------------------------------------
    def _items(self, lw: int, nw: int, pos: dict, stats: dict) -> Iterator[tuple[dict | None, dict]]:
        """Yield (sample or None, position after it) forever or until the last epoch ends."""
        cfg = self.cfg
        gw = self.rank * nw + lw
        multi = self.weights is not None
        u = random.Random(f"mix:{cfg.seed}:{gw}").random()  # weights mode: this worker's offset in the Weyl sequence
        skiplog = _SkipLog(cfg.log_first, cfg.log_interval_s, gw)
        sidecars: dict[str, SidecarReader] = {}
        pos = copy.deepcopy(pos)
        # Per pool: [list index, offset, generator, shard] of its open shards; reopened from `pos` on (re)start.
        opened: list[list[list]] = [[] for _ in self.pools]
        opened_at = None
        orders: dict[tuple[int, int], list[int]] = {}  # (pool, epoch) -> this worker's shard list

        def order(p: int, epoch: int) -> list[int] | None:
            if cfg.resampled:
                return None
            if (p, epoch) not in orders:
                for k in [k for k in orders if k[0] == p]:
                    del orders[k]
                orders[(p, epoch)] = self.worker_shards(epoch, self.rank, lw, nw, p)
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
                    p = self._pick(u, t0 + len(items)) if multi else 0
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
                    self._check_sources(stats, final=True)
                    pos = _start_pos(1, epoch + 1)
                    opened, opened_at = [[]], None
                    continue
                rng.shuffle(items)
                opened_at = (end["epoch"], end["window"])
                for j in range(pos["done"], len(items)):
                    item, shard = items[j]
                    srng = random.Random(f"s:{cfg.seed}:{gw}:{epoch}:{pos['window']}:{j}")
                    sample = self._process(item, self.shards[shard][1], srng, stats, skiplog, sidecars)
                    after = end if j + 1 == len(items) else {**pos, "done": j + 1}
                    yield sample, after
                if last_window:
                    self._check_sources(stats, final=True)
                pos = end
        finally:
            for o in itertools.chain.from_iterable(opened):
                o[2].close()
            for r in sidecars.values():
                r.close()

    def _pick(self, u: float, t: int) -> int:
        """Weights mode: the pool of item t of the worker whose offset is u (see the module docstring)."""
        x = (u + t * _INV_PHI) % 1.0 * self._wcum[-1]
        return min(bisect.bisect_right(self._wcum, x), len(self._wcum) - 1)

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
        shard = self._draw(gw, oi, p) if order is None else order[oi]
        url, src = self.shards[shard]
        return [oi, offset, self.sources[src].read(url, start=offset), shard]

    def _check_sources(self, stats: dict, final: bool) -> None:
        for s, src in enumerate(self.sources):
            raw, valid = stats["raw"][s], stats["valid"][s]
            if valid == 0 and raw > 0 and (final or raw >= self.cfg.no_valid_error_after):
                top = sorted(stats["skipped"].items(), key=lambda kv: -kv[1])[:3]
                raise NoValidSamplesError(
                    f"data source {src.spec!r} gave {raw} items and no valid sample (skips so far: {dict(top)}); "
                    f"check its shards with `llm2clip-nemo data inspect {src.urls[0]}`, fix data.caption_fields "
                    f"(now {dict(self.cfg.caption_fields)}) or drop the source from data.urls"
                )

    def _skip(self, reason: str, item: RawSample, stats: dict, skiplog: _SkipLog) -> None:
        stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
        skiplog(reason, f"{item.url}:{item.key or '#' + str(item.index)}", stats)

    def _process(self, item: RawSample, src: int, rng: random.Random, stats: dict, skiplog, sidecars) -> dict | None:
        stats["raw"][src] += 1
        try:
            checked = check_sample(item, self.policy.fields)
            for r in checked.reasons:
                self._skip(r, item, stats, skiplog)
            s = checked.sample
            if s is None:
                return None
            picks = self.policy.choose_all(s.txt, s.meta, rng) if self.cfg.caption_sampling == "all" else None
            choice = next(c for c in picks if c is not None) if picks else self.policy.choose(s.txt, s.meta, rng)
            try:
                image = self.transform(s.image, rng)
            except ImageDecodeError as e:
                self._skip(e.reason, item, stats, skiplog)
                return None
            sample = {"key": item.key, "image": image, "caption": choice.text, "caption_field": choice.field,
                      "source": src, "url": item.url}
            if picks:
                sample["captions"] = [c.text if c else "" for c in picks]
                sample["caption_mask"] = [c is not None for c in picks]
            if self.output == "embeddings":
                reader = self._sidecar(item.url, sidecars)
                if picks:  # absent fields are zero rows in the sidecar (and masked)
                    sample["teacher_emb"] = torch.stack([reader.vector(item.key, f) for f in self.policy.fields])
                else:
                    sample["teacher_emb"] = reader.vector(item.key, choice.field)
            stats["valid"][src] += 1
            for c in picks or [choice]:
                if c is not None:
                    stats["fields"][c.field] = stats["fields"].get(c.field, 0) + 1
            return sample
        finally:
            self._check_sources(stats, final=False)

    def _sidecar(self, url: str, cache: dict) -> SidecarReader:
        r = cache.get(url)
        if r is None:
            if len(cache) >= 2 * self.cfg.open_shards:
                cache.pop(next(iter(cache))).close()
            r = cache[url] = SidecarReader(
                sidecar_path(url, self.cfg.sidecar_dir), fingerprint=self.teacher_fingerprint,
                dim=self.teacher_dim, fields=self.policy.fields,
            )
        return r

    # ---- batches -----------------------------------------------------------------------------
    def _collate(self, buf: list[dict], lw: int, nw: int, pos: dict, stats: dict) -> dict:
        images = to_uint8_batch([s["image"] for s in buf])
        batch = {
            "image": normalize_batch(images, self.cfg.transform.mean, self.cfg.transform.std),
            "key": [s["key"] for s in buf],
            "caption": [s["caption"] for s in buf],
            "caption_field": [s["caption_field"] for s in buf],
            "source": [s["source"] for s in buf],
            "url": [s["url"] for s in buf],
            "stream_state": {"worker": lw, "num_workers": nw, "rank": self.rank,
                             "position": copy.deepcopy(pos), "stats": copy.deepcopy(stats)},
        }
        if self.cfg.caption_sampling == "all":
            batch["captions"] = [s["captions"] for s in buf]
            batch["caption_mask"] = torch.tensor([s["caption_mask"] for s in buf], dtype=torch.bool)
        if self.output == "embeddings":
            batch["teacher_emb"] = torch.stack([s["teacher_emb"] for s in buf])
        return batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        nw, pw = (info.num_workers, info.id) if info is not None else (1, 0)
        if self._num_workers is not None and self._num_workers != nw:
            raise DataSourceError(
                f"the stream position was saved with {self._num_workers} DataLoader workers per rank but this "
                f"loader has {nw}: positions are per worker, so resume with num_workers={self._num_workers}"
            )
        lw = (pw + self._next_worker) % nw
        pos = self._positions.get(lw, _start_pos(len(self.pools)))
        stats = copy.deepcopy(self._stats.get(lw, _empty_stats(len(self.sources))))
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
        batch = self._collate(buf, lw, nw, pos, stats)
        if in_process:
            self.track(batch)
        return batch

    # ---- position in the main process --------------------------------------------------------
    def track(self, batch: dict) -> None:
        """Record a consumed batch's worker position (the loader from `loader()` calls this)."""
        st = batch["stream_state"]
        self._num_workers = st["num_workers"]
        self._positions[st["worker"]] = st["position"]
        self._stats[st["worker"]] = st["stats"]
        self._next_worker = (st["worker"] + 1) % st["num_workers"]

    def state_dict(self) -> dict:
        """This rank's position: epoch, per-worker shard index and item offset, whose turn is next.

        RNG state needs no saving: every draw is seeded by (seed, worker, epoch, window, item)."""
        return {"version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size, "seed": self.cfg.seed,
                "urls": self.cfg.urls, "weights": self.weights, "upsampling_factors": self.cfg.upsampling_factors,
                "num_workers": self._num_workers, "next_worker": self._next_worker,
                "positions": {str(w): copy.deepcopy(p) for w, p in self._positions.items()},
                "stats": {str(w): copy.deepcopy(s) for w, s in self._stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; version 1 states (before pools; factor mode only) are upgraded,
        and resume exactly: factor mode's sequences did not change."""
        if state.get("version") == 1:
            state = _upgrade_v1(state)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"stream state version {state.get('version')!r} is not {STATE_VERSION}")
        for k, mine in (("world_size", self.world_size), ("rank", self.rank), ("seed", self.cfg.seed), ("urls", self.cfg.urls),
                         ("weights", self.weights), ("upsampling_factors", self.cfg.upsampling_factors)):
            if k in state and state[k] != mine:
                raise DataSourceError(
                    f"stream state was saved with {k}={state[k]!r} but this stream has {k}={mine!r}: an exact resume "
                    f"needs the same {k}; restore the original setting or start the data stream fresh"
                )
        self._num_workers = state["num_workers"]
        self._next_worker = state["next_worker"]
        self._positions = {int(w): copy.deepcopy(p) for w, p in state["positions"].items()}
        self._stats = {int(w): copy.deepcopy(s) for w, s in state["stats"].items()}

    def summary(self) -> dict:
        """Totals over this rank's workers: samples per source ("valid", "raw"), the achieved "share" of
        valid samples per source and the "target" share (weights mode; None in factor mode), skips by
        reason, caption field counts."""
        out = _empty_stats(len(self.sources))
        for s in self._stats.values():
            for k in ("skipped", "fields"):
                for r, n in s[k].items():
                    out[k][r] = out[k].get(r, 0) + n
            for k in ("valid", "raw"):
                out[k] = [a + b for a, b in zip(out[k], s[k])]
        out["skipped"] = dict(sorted(out["skipped"].items()))
        out["fields"] = dict(sorted(out["fields"].items()))
        out["epoch"] = max((p["epoch"] for p in self._positions.values()), default=0)
        total = sum(out["valid"])
        out["share"] = [v / total if total else 0.0 for v in out["valid"]]
        out["target"] = None if self.weights is None else list(self.weights)
        return out

    def summary_text(self) -> str:
        """One line for logs: samples per source, skips by reason, caption fields."""
        s = self.summary()
        tgt = s["target"] or [None] * len(self.sources)
        per_src = ", ".join(f"{src.spec}: {v}/{r} (share {sh:.3f}" + ("" if t is None else f", target {t:.3f}") + ")"
                            for src, v, r, sh, t in zip(self.sources, s["valid"], s["raw"], s["share"], tgt))
        return (f"data: epoch {s['epoch']}; valid/read per source: {per_src}; skipped: {s['skipped'] or 'none'}; "
                f"caption fields: {s['fields']}")

    def loader(self, num_workers: int = 2, **kw) -> TrackedLoader:
        return TrackedLoader(self, num_workers=num_workers, **kw)


def _upgrade_v1(state: dict) -> dict:
    """A version 1 state (one pool: {"epoch", "next", "open", "window", "done"}) in version 2 form."""
    def pos(p: dict) -> dict:
        return {"epoch": p["epoch"], "pools": [{"epoch": p["epoch"], "next": p["next"], "open": p["open"]}],
                "window": p["window"], "done": p["done"]}
    return {**state, "version": 2, "positions": {w: pos(p) for w, p in state["positions"].items()}}


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


def decode_member(ext: str, data: bytes):
    """The decode whitelist for loose members: images (via `decode_image`), text, json, npy, cls; pickles never.

    Returns None for anything not whitelisted (the caller counts it)."""
    import numpy as np

    base = ext.rsplit(".", 1)[-1]
    if base in IMAGE_EXTS:
        return decode_image(data).image  # upright RGB; ImageDecodeError (with .reason) when unusable
    if base in ("txt", "text", "caption"):
        return data.decode("utf-8")
    if base == "json":
        return json.loads(data)
    if base == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if base == "cls":
        return int(data.decode().strip())
    return None
