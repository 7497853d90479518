"""Caption groups -> (query, positive, hard negative) token batches for stage 1, one per step.

A *group* is the captions of one image (e.g. its short Unicode name and its long composed
caption). Training batch k of a run is a pure function of (seed, k): the group order of each pass
is a seeded permutation, so a resumed run sees exactly the batches the uninterrupted run would
have seen, and DP=2 sees the same global batch as DP=1 (rank r takes rows [r*b, (r+1)*b)).

Sources: a JSONL file (`{"id": ..., "captions": [...]}` per line), or webdataset shards (a .tar,
a directory of them, or a glob) whose `txt` member and json fields named in `caption_fields` are
the captions of a sample.
"""
from __future__ import annotations

import glob
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class CaptionGroup:
    key: str
    captions: tuple[str, ...]


def _shard_files(path: Path) -> list[str]:
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*.tar"))
    if path.suffix == ".tar":
        return [str(path)]
    return sorted(glob.glob(str(path)))


def _captions_of(txt: str | None, meta: dict | None, fields: Sequence[str]) -> list[str]:
    from ..data.captions import CaptionPolicy

    out: list[str] = []
    for f in fields:
        for c in CaptionPolicy.candidates(f, txt, meta):
            c = c.strip()
            if c and c not in out:
                out.append(c)
    return out


def load_caption_groups(path: str, caption_fields: Sequence[str] = ("txt", "long")) -> list[CaptionGroup]:
    """All caption groups of a JSONL file or of webdataset shards, in file order."""
    p = Path(path)
    groups: list[CaptionGroup] = []
    if p.suffix in (".jsonl", ".json") and p.is_file():
        for i, line in enumerate(p.read_text().splitlines()):
            if line.strip():
                row = json.loads(line)
                caps = tuple(c.strip() for c in row.get("captions", []) if isinstance(c, str) and c.strip())
                groups.append(CaptionGroup(str(row.get("id", i)), caps))
        return groups
    files = _shard_files(p)
    if not files:
        raise FileNotFoundError(f"{path}: no .jsonl file or .tar shards found there.")
    from ..data.tario import iter_tar_samples

    for url in files:
        for s in iter_tar_samples(url):
            if s.error:
                continue
            txt = s.members["txt"].decode("utf-8") if "txt" in s.members else None
            meta = json.loads(s.members["json"]) if "json" in s.members else None
            groups.append(CaptionGroup(s.key, tuple(_captions_of(txt, meta, caption_fields))))
    return groups


def tokenize_with_instruction(tokenizer, texts: Sequence[str], instructions: Sequence[str], max_length: int):
    """Right-padded (ids, attention_mask, pool_mask), pool_mask 0 on special and instruction tokens.

    Instruction and caption are tokenized separately and concatenated, so the number of
    instruction tokens is exact (tokenizing the joined string could merge tokens at the seam).
    """
    prefix = tokenizer("", add_special_tokens=True)["input_ids"]  # BOS for Llama-3 style tokenizers
    rows, pools = [], []
    for text, inst in zip(texts, instructions):
        if not text.strip():
            raise ValueError("empty caption in a training batch: drop empty captions from the dataset.")
        cap = tokenizer(text, add_special_tokens=False)["input_ids"]
        ins = tokenizer(inst, add_special_tokens=False)["input_ids"] if inst else []
        budget = max_length - len(prefix) - len(ins)
        if budget < 1:
            raise ValueError(f"model.data.max_length={max_length} leaves no room for a caption after the "
                             f"{len(ins)}-token instruction: raise max_length or shorten the instruction.")
        cap = cap[:budget]
        rows.append(prefix + ins + cap)
        pools.append([0] * (len(prefix) + len(ins)) + [1] * len(cap))
    s = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), s), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), s), dtype=torch.long)
    pool = torch.zeros((len(rows), s), dtype=torch.long)
    for i, (r, pm) in enumerate(zip(rows, pools)):
        ids[i, :len(r)] = torch.tensor(r)
        attn[i, :len(r)] = 1
        pool[i, :len(r)] = torch.tensor(pm)
    return ids, attn, pool


@dataclass(frozen=True)
class Triple:
    query: str
    positive: str
    negatives: tuple[str, ...]


class TripleSchedule:
    """The global batch of triples at any step: a pure function of (seed, step)."""

    def __init__(self, groups: Sequence[CaptionGroup], global_batch: int, hard_negatives: int = 1, seed: int = 0):
        self.groups = [g for g in groups if len(g.captions) >= 2]
        if len(self.groups) < global_batch:
            raise ValueError(f"only {len(self.groups)} caption groups with >= 2 captions for a global batch of "
                             f"{global_batch}: lower model.data.global_batch_size or add data.")
        self.global_batch = global_batch
        self.hard_negatives = hard_negatives
        self.seed = seed
        self.steps_per_pass = len(self.groups) // global_batch
        self._perm_cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            order = list(range(len(self.groups)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._perm_cache = {epoch: order}
        return self._perm_cache[epoch]

    def batch(self, step: int) -> list[Triple]:
        epoch, i = divmod(step, self.steps_per_pass)
        perm = self._perm(epoch)
        idx = perm[i * self.global_batch:(i + 1) * self.global_batch]
        rng = random.Random(f"{self.seed}:{step}")
        triples = []
        for gi in idx:
            caps = list(self.groups[gi].captions)
            q, p = rng.sample(caps, 2)  # direction random (short->long or long->short)
            negs = []
            for _ in range(self.hard_negatives):
                # hard negative: a caption of another image of this batch (shares the batch's domain)
                other = self.groups[idx[rng.randrange(len(idx))]] if len(idx) > 1 else self.groups[gi]
                while other is self.groups[gi] and len(idx) > 1:
                    other = self.groups[idx[rng.randrange(len(idx))]]
                negs.append(rng.choice(other.captions))
            triples.append(Triple(q, p, tuple(negs)))
        return triples


def collate_triples(tokenizer, triples: Sequence[Triple], query_instruction: str, max_length: int) -> dict:
    """One padded [B*(2+H), S] batch: queries, then positives, then negatives (negative-major per row).

    Only queries carry the instruction (as in llm2vec): documents are embedded as plain captions,
    the way the frozen teacher will embed them in stage 2.
    """
    texts = [t.query for t in triples] + [t.positive for t in triples] + [n for t in triples for n in t.negatives]
    insts = [query_instruction] * len(triples) + [""] * (len(texts) - len(triples))
    ids, attn, pool = tokenize_with_instruction(tokenizer, texts, insts, max_length)
    return {"input_ids": ids, "attention_mask": attn, "pool_mask": pool,
            "n": torch.tensor(len(triples)), "h": torch.tensor(len(triples[0].negatives) if triples else 0)}


class StepLoader:
    """Iterable of this rank's training batches from step `start_step()` to `total_steps`.

    `start_step` is read each time iteration begins (the trainer's step on resume), so a resumed
    run continues at the exact batch; Lightning sees a sized iterable of the remaining steps.
    """

    def __init__(self, schedule: TripleSchedule, tokenizer, rank: int, world: int, total_steps: int,
                 query_instruction: str, max_length: int, start_step: Callable[[], int] = lambda: 0):
        if schedule.global_batch % world:
            raise ValueError(f"global batch {schedule.global_batch} is not divisible by {world} ranks.")
        self.schedule, self.tokenizer = schedule, tokenizer
        self.rank, self.world, self.total_steps = rank, world, total_steps
        self.local = schedule.global_batch // world
        self.query_instruction, self.max_length = query_instruction, max_length
        self.start_step = start_step

    def local_triples(self, step: int) -> list[Triple]:
        return self.schedule.batch(step)[self.rank * self.local:(self.rank + 1) * self.local]

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step(), 0)

    def __iter__(self):
        for step in range(self.start_step(), self.total_steps):
            yield collate_triples(self.tokenizer, self.local_triples(step), self.query_instruction, self.max_length)


def flatten_eval_captions(groups: Sequence[CaptionGroup], max_groups: int | None = None) -> tuple[list[str], list[int]]:
    """(captions, image index per caption) of a held-out set for CRA."""
    texts, ids = [], []
    for gi, g in enumerate(groups[:max_groups] if max_groups else groups):
        for c in g.captions:
            texts.append(c)
            ids.append(gi)
    return texts, ids
