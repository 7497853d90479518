"""The training stream's position and counts: their records, the main-process tracker, save and restore.

A worker's position is a handful of integers:
  {"epoch", "pools": [{"epoch", "next" (shard-list index), "open": [[list index, item offset], ...]}],
   "window", "done"}
and its counts `{"skipped": {reason: n}, "fields": {field: n}, "valid": [per source], "raw": [per source]}`.
Every batch carries its worker's position and counts in `batch["stream_state"]`; the main process keeps
the latest per worker (`StreamTracker.track`), which is what `state_dict()` saves. DataLoader hands out
batches round-robin over workers, so the state also records whose turn is next and a resumed loader
starts at that worker.
"""
from __future__ import annotations

import copy

from .spec import DataSourceError

STATE_VERSION = 2
IDENTITY_KEYS = ("rank", "world_size", "seed", "urls", "weights", "upsampling_factors")
"""What a saved state must match to resume exactly (in the order `state_dict` writes them)."""
_CHECK_ORDER = ("world_size", "rank", "seed", "urls", "weights", "upsampling_factors")


def empty_stats(n_sources: int) -> dict:
    """Counts before the first item: no skips, no fields, zero valid and raw items per source."""
    return {"skipped": {}, "fields": {}, "valid": [0] * n_sources, "raw": [0] * n_sources}


def start_pos(n_pools: int, epoch: int = 0) -> dict:
    """The position at the start of `epoch`: every pool at its first shard, window 0, nothing done."""
    return {"epoch": epoch, "pools": [{"epoch": epoch, "next": 0, "open": []} for _ in range(n_pools)],
            "window": 0, "done": 0}


def upgrade_v1(state: dict) -> dict:
    """A version 1 state (one pool: {"epoch", "next", "open", "window", "done"}) in version 2 form."""
    def pos(p: dict) -> dict:
        return {"epoch": p["epoch"], "pools": [{"epoch": p["epoch"], "next": p["next"], "open": p["open"]}],
                "window": p["window"], "done": p["done"]}
    return {**state, "version": 2, "positions": {w: pos(p) for w, p in state["positions"].items()}}


class StreamTracker:
    """Main-process view of consumed batches: the latest position and counts per DataLoader worker,
    the number of workers and whose turn is next."""

    def __init__(self) -> None:
        self.positions: dict[int, dict] = {}
        self.stats: dict[int, dict] = {}
        self.num_workers: int | None = None
        self.next_worker = 0

    def track(self, batch: dict) -> None:
        """Record a consumed batch's worker position and counts."""
        st = batch["stream_state"]
        self.num_workers = st["num_workers"]
        self.positions[st["worker"]] = st["position"]
        self.stats[st["worker"]] = st["stats"]
        self.next_worker = (st["worker"] + 1) % st["num_workers"]

    def resume_point(self, pw: int, nw: int, n_pools: int, n_sources: int) -> tuple[int, dict, dict]:
        """(logical worker, position, counts) where DataLoader worker `pw` of `nw` starts: workers are
        rotated so the saved next turn comes first. DataSourceError when `nw` differs from the saved count."""
        if self.num_workers is not None and self.num_workers != nw:
            raise DataSourceError(
                f"the stream position was saved with {self.num_workers} DataLoader workers per rank but this "
                f"loader has {nw}: positions are per worker, so resume with num_workers={self.num_workers}"
            )
        lw = (pw + self.next_worker) % nw
        pos = self.positions.get(lw, start_pos(n_pools))
        return lw, pos, copy.deepcopy(self.stats.get(lw, empty_stats(n_sources)))

    def state_dict(self, identity: dict) -> dict:
        """The tracked positions and counts under `identity` (the `IDENTITY_KEYS` of the stream)."""
        return {"version": STATE_VERSION, **{k: identity[k] for k in IDENTITY_KEYS},
                "num_workers": self.num_workers, "next_worker": self.next_worker,
                "positions": {str(w): copy.deepcopy(p) for w, p in self.positions.items()},
                "stats": {str(w): copy.deepcopy(s) for w, s in self.stats.items()}}

    def load_state_dict(self, state: dict, identity: dict) -> None:
        """Restore a `state_dict()`; version 1 states are upgraded. ValueError for an unknown version,
        DataSourceError when a saved identity key differs from this stream's."""
        if state.get("version") == 1:
            state = upgrade_v1(state)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"stream state version {state.get('version')!r} is not {STATE_VERSION}")
        for k in _CHECK_ORDER:
            if k in state and state[k] != identity[k]:
                raise DataSourceError(
                    f"stream state was saved with {k}={state[k]!r} but this stream has {k}={identity[k]!r}: an exact "
                    f"resume needs the same {k}; restore the original setting or start the data stream fresh"
                )
        self.num_workers = state["num_workers"]
        self.next_worker = state["next_worker"]
        self.positions = {int(w): copy.deepcopy(p) for w, p in state["positions"].items()}
        self.stats = {int(w): copy.deepcopy(s) for w, s in state["stats"].items()}

    def summary(self, n_sources: int, weights: list[float] | None) -> dict:
        """Totals over the tracked workers: samples per source ("valid", "raw"), the achieved "share" of
        valid samples per source and the "target" share (`weights`; None in factor mode), skips by
        reason, caption field counts, the furthest "epoch"."""
        out = empty_stats(n_sources)
        for s in self.stats.values():
            for k in ("skipped", "fields"):
                for r, n in s[k].items():
                    out[k][r] = out[k].get(r, 0) + n
            for k in ("valid", "raw"):
                out[k] = [a + b for a, b in zip(out[k], s[k])]
        out["skipped"] = dict(sorted(out["skipped"].items()))
        out["fields"] = dict(sorted(out["fields"].items()))
        out["epoch"] = max((p["epoch"] for p in self.positions.values()), default=0)
        total = sum(out["valid"])
        out["share"] = [v / total if total else 0.0 for v in out["valid"]]
        out["target"] = None if weights is None else list(weights)
        return out
