"""The training stream's position and counts: their records, the main-process tracker, save, restore, merge.

A reader is a (data slot, DataLoader worker) pair (see `stream.ImageTextStream`). Its position is a
handful of integers:
  {"epoch", "pools": [{"epoch", "next" (shard-list index), "open": [[list index, item offset], ...]}],
   "window", "done"}
and its counts `{"skipped": {reason: n}, "fields": {field: n}, "valid": [per source], "raw": [per source]}`.
Every batch carries, for each slot its rank reads, its worker's position and counts in
`batch["stream_state"]["slots"]`; the main process keeps the latest per reader (`StreamTracker.track`),
which is what `state_dict()` saves. DataLoader hands out batches round-robin over workers, so the state
also records whose turn is next and a resumed loader starts at that worker. All slots of all ranks
advance together (one batch part per slot per step), so every rank's state of one step has the same
next worker, and the states of all ranks together (`merge_states`) describe the whole global stream:
any world size that divides the slot count can pick up its slots from them.

State version 3: {"version": 3, "rank", "world_size" (of the process that saved), "seed", "urls",
"weights", "upsampling_factors", "slots" (slot count), "hosted" (slots the saver read), "num_workers",
"next_worker", "positions": {slot: {worker: position}}, "stats": {slot: {worker: counts}}} (keys as
strings: JSON). Versions 1 and 2 (one rank = one slot) are upgraded.
"""
from __future__ import annotations

import copy

from .spec import DataSourceError

STATE_VERSION = 3
IDENTITY_KEYS = ("seed", "urls", "weights", "upsampling_factors")
"""What a saved state must match to resume exactly."""


def empty_stats(n_sources: int) -> dict:
    """Counts before the first item: no skips, no fields, zero valid and raw items per source."""
    return {"skipped": {}, "fields": {}, "valid": [0] * n_sources, "raw": [0] * n_sources}


def start_pos(n_pools: int, epoch: int = 0) -> dict:
    """The position at the start of `epoch`: every pool at its first shard, window 0, nothing done."""
    return {"epoch": epoch, "pools": [{"epoch": epoch, "next": 0, "open": []} for _ in range(n_pools)],
            "window": 0, "done": 0}


def upgrade(state: dict) -> dict:
    """A state of any known version in version 3 form (a copy). Version 1 (one pool: {"epoch", "next",
    "open", "window", "done"} per worker) and 2 (pools; one rank's workers) become one slot, the rank's.
    DataSourceError for an unknown version (a newer llm2clip_nemo wrote it)."""
    state = copy.deepcopy(state)
    version = state.get("version")
    if version == 1:
        state["positions"] = {w: {"epoch": p["epoch"], "pools": [{"epoch": p["epoch"], "next": p["next"],
                                                                  "open": p["open"]}],
                                  "window": p["window"], "done": p["done"]} for w, p in state["positions"].items()}
        version = 2
    if version == 2:
        slot = str(state["rank"])
        return {**state, "version": STATE_VERSION, "slots": state["world_size"], "hosted": [state["rank"]],
                "positions": {slot: state["positions"]}, "stats": {slot: state["stats"]}}
    if version != STATE_VERSION:
        raise DataSourceError(f"the saved stream state has version {version!r} but this llm2clip_nemo reads versions "
                              f"1 to {STATE_VERSION}: resume with the llm2clip_nemo version that wrote the checkpoint")
    return state


def merge_states(states: list[dict]) -> dict:
    """One state holding the slots of every given state (each rank's, as saved at one step), so a run at
    another world size can take its own slots from it. DataSourceError when the states are not of one
    stream at one step (different seed, urls, mixing, slot count, worker count or next worker) or two of
    them hold the same slot."""
    states = [upgrade(s) for s in states]
    if not states:
        raise ValueError("merge_states needs at least one state")
    out = copy.deepcopy(states[0])
    for s in states[1:]:
        for k in (*IDENTITY_KEYS, "slots", "num_workers", "next_worker"):
            a, b = out.get(k), s.get(k)
            if a != b and not (k == "num_workers" and None in (a, b)):
                raise DataSourceError(
                    f"the saved stream states of ranks {out['rank']} and {s['rank']} differ in {k} ({a!r} vs "
                    f"{b!r}): they are not one stream at one step; resume from a checkpoint all ranks wrote together")
        if both := sorted(set(out["hosted"]) & set(s["hosted"])):
            raise DataSourceError(
                f"the saved stream states of ranks {out['rank']} and {s['rank']} both hold data slots {both}: a rank's "
                f"file was copied over another's; resume from a checkpoint all ranks wrote together")
        out["num_workers"] = out["num_workers"] if out["num_workers"] is not None else s["num_workers"]
        out["hosted"] = sorted(set(out["hosted"]) | set(s["hosted"]))
        for k in ("positions", "stats"):
            out[k].update(copy.deepcopy(s[k]))
    return out


class StreamTracker:
    """Main-process view of consumed batches: the latest position and counts per reader (slot, worker),
    the number of workers and whose turn is next."""

    def __init__(self) -> None:
        self.positions: dict[tuple[int, int], dict] = {}
        self.stats: dict[tuple[int, int], dict] = {}
        self.num_workers: int | None = None
        self.next_worker = 0

    def track(self, batch: dict) -> None:
        """Record a consumed batch's reader positions and counts (one per slot it holds)."""
        st = batch["stream_state"]
        self.num_workers = st["num_workers"]
        for slot, part in st["slots"].items():
            self.positions[(int(slot), st["worker"])] = part["position"]
            self.stats[(int(slot), st["worker"])] = part["stats"]
        self.next_worker = (st["worker"] + 1) % st["num_workers"]

    def first_worker(self, pw: int, nw: int) -> int:
        """The logical worker that DataLoader worker `pw` of `nw` plays: workers are rotated so the saved
        next turn comes first. DataSourceError when `nw` differs from the saved count."""
        if self.num_workers is not None and self.num_workers != nw:
            raise DataSourceError(
                f"the stream position was saved with {self.num_workers} DataLoader workers per rank but this "
                f"loader has {nw}: positions are per worker, so resume with num_workers={self.num_workers}"
            )
        return (pw + self.next_worker) % nw

    def resume_point(self, slot: int, lw: int, n_pools: int, n_sources: int) -> tuple[dict, dict]:
        """(position, counts) where reader (slot, logical worker lw) starts."""
        pos = self.positions.get((slot, lw), start_pos(n_pools))
        return pos, copy.deepcopy(self.stats.get((slot, lw), empty_stats(n_sources)))

    def state_dict(self, identity: dict, slots: int, hosted: list[int]) -> dict:
        """The tracked positions and counts (version 3, see the module docstring) under `identity`
        ("rank", "world_size" and the `IDENTITY_KEYS`)."""
        def nest(d: dict) -> dict:
            out: dict = {str(s): {} for s in hosted}
            for (s, w), v in sorted(d.items()):
                out[str(s)][str(w)] = copy.deepcopy(v)
            return out

        return {"version": STATE_VERSION, "rank": identity["rank"], "world_size": identity["world_size"],
                **{k: identity[k] for k in IDENTITY_KEYS}, "slots": slots, "hosted": list(hosted),
                "num_workers": self.num_workers, "next_worker": self.next_worker,
                "positions": nest(self.positions), "stats": nest(self.stats)}

    def load_state_dict(self, state: dict, identity: dict, hosted: list[int]) -> None:
        """Restore the readers of slots `hosted` from a version 3 state (`upgrade` first). DataSourceError
        when a saved identity key differs from this stream's or the state lacks one of the slots."""
        for k in IDENTITY_KEYS:
            if k in state and state[k] != identity[k]:
                raise DataSourceError(
                    f"stream state was saved with {k}={state[k]!r} but this stream has {k}={identity[k]!r}: an exact "
                    f"resume needs the same {k}; restore the original setting or start the data stream fresh"
                )
        missing = [s for s in hosted if s not in state["hosted"]]
        if missing:
            raise DataSourceError(
                f"the saved stream state holds data slots {state['hosted']} but rank {identity['rank']} reads "
                f"{list(hosted)}: resume from the states of every rank (merge_states / load_state_dicts)")
        self.num_workers = state["num_workers"]
        self.next_worker = state["next_worker"]
        self.positions = {(int(s), int(w)): copy.deepcopy(p) for s in map(str, hosted)
                          for w, p in state["positions"].get(s, {}).items()}
        self.stats = {(int(s), int(w)): copy.deepcopy(c) for s in map(str, hosted)
                      for w, c in state["stats"].get(s, {}).items()}

    def summary(self, n_sources: int, weights: list[float] | None) -> dict:
        """Totals over the tracked readers: samples per source ("valid", "raw"), the achieved "share" of
        valid samples per source and the "target" share (`weights`; None in factor mode), skips by
        reason, caption field counts, the furthest "epoch"."""
        epoch = max((p["epoch"] for p in self.positions.values()), default=0)
        return _totals(list(self.stats.values()), n_sources, epoch, None if weights is None else list(weights))


def combine_summaries(parts: list[dict]) -> dict:
    """One `StreamTracker.summary()` of several ranks' (each rank's readers are its own): valid, raw,
    skipped and field counts summed, the furthest epoch, the share recomputed; "target" as given."""
    return _totals(parts, len(parts[0]["valid"]), max(p["epoch"] for p in parts), parts[0]["target"])


def _totals(counts: list[dict], n_sources: int, epoch: int, target: list[float] | None) -> dict:
    """Counts (`empty_stats` form) summed, with "epoch", the valid "share" per source and "target"."""
    out = empty_stats(n_sources)
    for c in counts:
        for k in ("skipped", "fields"):
            for r, n in c[k].items():
                out[k][r] = out[k].get(r, 0) + n
        for k in ("valid", "raw"):
            out[k] = [a + b for a, b in zip(out[k], c[k])]
    out["skipped"] = dict(sorted(out["skipped"].items()))
    out["fields"] = dict(sorted(out["fields"].items()))
    total = sum(out["valid"])
    return {**out, "epoch": epoch, "share": [v / total if total else 0.0 for v in out["valid"]], "target": target}
