"""The frozen LLM teacher as the rest of the system sees it.

    teacher = Teacher.load(path, groups, contract)   # contract: formats.contract.TeacherContract
    emb = teacher.encode_texts(captions)             # offline: same captions on every TP rank
    emb = teacher.encode_online(captions)            # online: each rank its own captions

`path` is a Megatron teacher directory (`convert import-llm`) or a HF directory / GGUF file. Both
paths prepare text with the teacher contract (`text.preparation.prepare_texts`), pad to the longest
caption of a length bucket (never to a constant) and pool the contract's tokens.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from ..formats.contract import TeacherContract, contract_path, read_contract, resolve_contract
from ..runtime import ParallelLayout
from .megatron_encoder import EncoderOptions, MegatronLlamaEncoder
from .pooling import pool
from .preparation import prepare_texts


def length_buckets(lengths: Sequence[int], max_batch: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to cut padding.

    A batch holds at most `max_batch` rows and, if given, at most `max_tokens` padded tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, cur = [], []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) >= max_batch or (max_tokens and longest * (len(cur) + 1) > max_tokens)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def tp_gather_rows(x: torch.Tensor, groups: ParallelLayout, pad_value=0) -> tuple[torch.Tensor, list[int]]:
    """All-gather [b_i, s_i] tensors of the TP group into one [sum b, max s] tensor.

    Returns the concatenation (in TP-rank order) and the row counts per rank.
    """
    dev = x.device
    meta = torch.tensor([x.shape[0], x.shape[1]], dtype=torch.long, device=dev)
    metas = [torch.zeros_like(meta) for _ in range(groups.tp_size)]
    dist.all_gather(metas, meta, group=groups.tp_group)
    rows = [int(m[0]) for m in metas]
    bmax, smax = max(rows), max(int(m[1]) for m in metas)
    padded = torch.full((bmax, smax), pad_value, dtype=x.dtype, device=dev)
    padded[: x.shape[0], : x.shape[1]] = x
    gathered = [torch.empty_like(padded) for _ in range(groups.tp_size)]
    dist.all_gather(gathered, padded, group=groups.tp_group)
    return torch.cat([g[:n] for g, n in zip(gathered, rows)], dim=0), rows


class Teacher:
    """Frozen Megatron LLM encoder + tokenizer + teacher contract + fingerprint."""

    def __init__(self, encoder: MegatronLlamaEncoder, tokenizer, weights_digest: str, contract: TeacherContract,
                 source: str = ""):
        from ..formats.teacher_dir import teacher_fingerprint

        self.encoder = encoder
        self.tokenizer = tokenizer
        self.weights_digest = weights_digest
        self.contract = contract
        self.source = source
        self.fingerprint = teacher_fingerprint(weights_digest, contract)

    @property
    def groups(self) -> ParallelLayout:
        return self.encoder.groups

    @property
    def hidden_size(self) -> int:
        return self.encoder.spec.hidden_size

    @classmethod
    def load(cls, path, groups: ParallelLayout, contract: TeacherContract | None = None,
             params_dtype: torch.dtype = torch.float32, use_te: bool | None = None,
             tp_field: str = "teacher.tensor_parallel") -> Teacher:
        """The teacher at `path` split over `groups`' TP group. `contract` None: the one recorded with
        the teacher (defaults if it records none); a given contract must equal the recorded one
        (ConfigError naming the first field that differs). `tp_field`: the TP size's config path, named
        when it does not divide the heads."""
        from transformers import AutoTokenizer

        from ..formats.hf_io import find_gguf
        from ..formats.teacher_dir import load_teacher_weights, teacher_shard_for

        path = Path(path)
        recorded = read_contract(path)
        if contract is None:
            contract = recorded or TeacherContract()
        elif recorded is not None:
            resolve_contract(recorded, contract.to_dict(), str(contract_path(path)))
        spec, shard, meta = teacher_shard_for(path, groups.tp_size, groups.tp_rank, tp_field)
        options = EncoderOptions(contract.bidirectional, contract.pooling, params_dtype=params_dtype, use_te=use_te)
        encoder = MegatronLlamaEncoder(spec, groups, options)
        load_teacher_weights(encoder, shard)
        encoder.to(groups.device)
        if (path / "teacher.json").is_file():
            tok = AutoTokenizer.from_pretrained(path / "hf")
        else:
            d, gguf = find_gguf(path)
            d = Path(meta.get("tokenizer_dir") or d)  # an adapter's tokenizer may live in its base
            tok = AutoTokenizer.from_pretrained(d, **({"gguf_file": gguf} if gguf else {}))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return cls(encoder, tok, meta["weights_digest"], contract, str(path))

    def prepare(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Captions -> (input_ids, attention_mask, pool_mask) [N, S], by the teacher contract."""
        return prepare_texts(self.tokenizer, texts, self.contract)

    def _embed(self, ids: torch.Tensor, mask: torch.Tensor, pool_mask: torch.Tensor, batch_size: int,
               max_tokens: int | None) -> torch.Tensor:
        """Rows -> [N, H] fp32 in row order, in length buckets each padded to its longest row only."""
        dev = self.groups.device
        lengths = mask.sum(1).tolist()
        out = torch.empty(ids.shape[0], self.hidden_size, dtype=torch.float32, device=dev)
        for idx in length_buckets(lengths, batch_size, max_tokens):
            s = max(lengths[i] for i in idx)
            sel = torch.tensor(idx, device=ids.device)
            m = mask[sel, :s].to(dev)
            h = self.encoder.hidden_states(ids[sel, :s].to(dev), m)
            out[sel.to(dev)] = pool(h, pool_mask[sel, :s].to(dev), self.contract.pooling)
        return out

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64, max_tokens: int | None = None) -> torch.Tensor:
        """Captions -> [N, H] fp32 on CPU, in input order. Batches are length-bucketed to cut padding.

        Every rank of a TP group must pass the same captions (the offline/extraction path).
        """
        ids, mask, pool_mask = self.prepare(texts)
        return self._embed(ids, mask, pool_mask, batch_size, max_tokens).cpu()

    @torch.inference_mode()
    def encode_online(self, texts: Sequence[str], batch_size: int = 64, max_tokens: int | None = None) -> torch.Tensor:
        """Online TP teacher: each rank passes its OWN captions and gets back exactly their rows
        ([n_own, H] fp32 on the group's device).

        The TP group all-gathers its prepared captions, runs the TP forward on the concatenation in
        length buckets (each padded to its own longest caption), and each rank keeps its slice
        (DESIGN, "Parallel layout").
        """
        ids, mask, pool_mask = self.prepare(texts)
        g = self.groups
        if g.tp_size == 1:
            return self._embed(ids, mask, pool_mask, batch_size, max_tokens)
        dev = g.device
        ids, rows = tp_gather_rows(ids.to(dev), g, pad_value=self.tokenizer.pad_token_id or 0)
        mask, _ = tp_gather_rows(mask.to(dev), g, pad_value=0)
        pool_mask, _ = tp_gather_rows(pool_mask.to(dev), g, pad_value=0)
        emb = self._embed(ids, mask, pool_mask, batch_size, max_tokens)
        start = sum(rows[: g.tp_rank])
        return emb[start: start + rows[g.tp_rank]]
