"""Caption records -> (query, positive, hard negative) token batches for stage 1, one per step.

Triples come from `data.pairs` (two captions of one image, direction random; the hard negative a
caption of another image, from the same subgroup when `negative_group_field` is set). Training
batch k of a run is a pure function of (seed, k): pass e uses the triples of epoch e in a seeded
order, so a resumed run sees exactly the batches the uninterrupted run would have seen, and DP=2
sees the same global batch as DP=1 (rank r takes rows [r*b, (r+1)*b)).

Sources: webdataset shards (a spec `data.spec.parse_sources` understands: dir, brace pattern,
manifest, `a::b`) or a JSONL file of `{"id": ..., "captions": [...]}` lines (all captions short).
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..data.pairs import CaptionRecord, CaptionTriple, PairConfig, make_triples, read_caption_records
from ..formats.contract import TeacherContract
from ..text.preparation import prepare_texts


def load_records(path: str, pair_cfg: PairConfig) -> list[CaptionRecord]:
    """Caption records of a JSONL file or of webdataset shards, in source order."""
    p = Path(path)
    if p.suffix == ".jsonl" and p.is_file():
        recs = []
        for i, line in enumerate(p.read_text().splitlines()):
            if line.strip():
                row = json.loads(line)
                caps = tuple(dict.fromkeys(c.strip() for c in row.get("captions", []) if isinstance(c, str) and c.strip()))
                recs.append(CaptionRecord(str(row.get("id", i)), caps, ()))
        return recs
    return read_caption_records(path, pair_cfg)


def tokenize_with_instruction(tokenizer, texts: Sequence[str], instructions: Sequence[str], max_length: int):
    """Right-padded (ids, attention_mask, pool_mask), pool_mask 0 on special and instruction tokens:
    the teacher contract's plain preparation (`text.preparation.prepare_texts`), per-row instructions.

    Instruction and caption are tokenized separately and concatenated, so the number of
    instruction tokens is exact (tokenizing the joined string could merge tokens at the seam).
    """
    contract = TeacherContract(max_length=max_length, text_preparation="plain", pool_special_tokens=False)
    return prepare_texts(tokenizer, texts, contract, instructions=[i or "" for i in instructions],
                         length_field="model.data.max_length")


class TripleSchedule:
    """The global batch of triples at any step: a pure function of (pair seed, step)."""

    def __init__(self, records: Sequence[CaptionRecord], global_batch: int, pair_cfg: PairConfig):
        self.records, self.pair_cfg, self.global_batch = list(records), pair_cfg, global_batch
        n = len(make_triples(self.records, pair_cfg, 0))
        if n < global_batch:
            raise ValueError(f"only {n} caption pairs (images with >= 2 captions) for a global batch of "
                             f"{global_batch}: lower model.data.global_batch_size or add data.")
        self.steps_per_pass = n // global_batch
        self._cache: tuple[int, list[CaptionTriple]] | None = None

    def _epoch(self, epoch: int) -> list[CaptionTriple]:
        if self._cache is None or self._cache[0] != epoch:
            triples = make_triples(self.records, self.pair_cfg, epoch)
            random.Random(f"order:{self.pair_cfg.seed}:{epoch}").shuffle(triples)
            self._cache = (epoch, triples)
        return self._cache[1]

    def batch(self, step: int) -> list[CaptionTriple]:
        epoch, i = divmod(step, self.steps_per_pass)
        return self._epoch(epoch)[i * self.global_batch:(i + 1) * self.global_batch]


def collate_triples(tokenizer, triples: Sequence[CaptionTriple], max_length: int, hard_negatives: bool = True,
                    sep: str = ": ") -> dict:
    """One padded [B*(2+H), S] batch: queries, then positives, then hard negatives (H = 0 or 1).

    Only queries carry the instruction (as in llm2vec), excluded from the pool: documents are
    embedded as plain captions, the way the frozen teacher will embed them in stage 2.
    """
    texts = [t.query for t in triples] + [t.positive for t in triples]
    if hard_negatives:
        texts += [t.negative for t in triples]
    insts = [f"{t.instruction}{sep}" if t.instruction else "" for t in triples] + [""] * (len(texts) - len(triples))
    ids, attn, pool = tokenize_with_instruction(tokenizer, texts, insts, max_length)
    return {"input_ids": ids, "attention_mask": attn, "pool_mask": pool,
            "n": torch.tensor(len(triples)), "h": torch.tensor(1 if hard_negatives else 0)}


class BatchCursor:
    """Stage 1's data position: the number of (micro-)batches trained on. Batch k of a run is a
    function of (seed, k), so this one integer resumes the data exactly. The training engine calls
    `track` for each batch it trains on and saves `state_dict()` in its checkpoint payload."""

    def __init__(self) -> None:
        self.next_batch = 0

    def track(self, batch) -> None:
        self.next_batch += 1

    def state_dict(self) -> dict:
        return {"next_batch": self.next_batch}

    def load_state_dict(self, state: dict) -> None:
        self.next_batch = int(state["next_batch"])


class StepLoader:
    """Iterable of this rank's training batches from batch `start_step()` to `total_steps`.

    `start_step` is read each time iteration begins (a `BatchCursor`'s position on resume), so a
    resumed run continues at the exact batch; Lightning sees a sized iterable of the remaining ones.
    """

    def __init__(self, schedule: TripleSchedule, tokenizer, rank: int, world: int, total_steps: int,
                 max_length: int, hard_negatives: bool = True, start_step: Callable[[], int] = lambda: 0):
        if schedule.global_batch % world:
            raise ValueError(f"global batch {schedule.global_batch} is not divisible by {world} ranks.")
        self.schedule, self.tokenizer = schedule, tokenizer
        self.rank, self.world, self.total_steps = rank, world, total_steps
        self.local = schedule.global_batch // world
        self.max_length, self.hard_negatives = max_length, hard_negatives
        self.start_step = start_step

    def local_triples(self, step: int) -> list[CaptionTriple]:
        return self.schedule.batch(step)[self.rank * self.local:(self.rank + 1) * self.local]

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step(), 0)

    def __iter__(self):
        for step in range(self.start_step(), self.total_steps):
            yield collate_triples(self.tokenizer, self.local_triples(step), self.max_length, self.hard_negatives)


def eval_captions(records: Sequence[CaptionRecord], max_images: int | None = None) -> tuple[list[str], list[int]]:
    """(captions, image index per caption) of a held-out set for CRA: every caption of every image.

    `max_images` keeps an evenly spaced subset (shards are often ordered by category: a prefix
    would hold one category only)."""
    if max_images and max_images < len(records):
        records = [records[i * len(records) // max_images] for i in range(max_images)]
    texts, ids = [], []
    for gi, r in enumerate(records):
        for c in dict.fromkeys(r.short + r.long):
            texts.append(c)
            ids.append(gi)
    return texts, ids
