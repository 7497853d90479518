"""The frozen LLM teacher as the rest of the system sees it.

    teacher = Teacher.load(path, groups, EncoderOptions(...))
    emb = teacher.encode_texts(captions)                    # offline: same captions on every TP rank
    emb = teacher.encode_online(input_ids, attention_mask)  # online: each rank its own captions

`path` is a Megatron teacher directory (`convert import-llm`) or a HF directory / GGUF file.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import ConfigError
from ..runtime import ParallelGroups
from .hf_encoder import tokenize
from .megatron_encoder import EncoderOptions, MegatronLlamaEncoder


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


def tp_gather_rows(x: torch.Tensor, groups: ParallelGroups, pad_value=0) -> tuple[torch.Tensor, list[int]]:
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


def check_cc_options(path: Path, options: EncoderOptions) -> None:
    """A caption-contrastive LLM embeds well only the way it was trained (attention mask, pooling):
    refuse other settings. Stage 1 records them in llm2clip_cc.json; `import-llm` carries it along."""
    for f in (path / "llm2clip_cc.json", path / "hf" / "llm2clip_cc.json"):
        if f.is_file():
            cc = json.loads(f.read_text())
            for key in ("bidirectional", "pooling"):
                if key in cc and cc[key] != getattr(options, key):
                    raise ConfigError(
                        f"teacher {path} was caption-contrastive trained with {key}={cc[key]} but is asked to "
                        f"embed with {key}={getattr(options, key)}: set teacher.{key}={cc[key]} (see {f}).")
            return


class Teacher:
    """Frozen Megatron LLM encoder + tokenizer + fingerprint."""

    def __init__(self, encoder: MegatronLlamaEncoder, tokenizer, weights_digest: str, source: str = ""):
        from ..convert.llm import teacher_fingerprint

        self.encoder = encoder
        self.tokenizer = tokenizer
        self.weights_digest = weights_digest
        self.source = source
        o = encoder.options
        self.fingerprint = teacher_fingerprint(weights_digest, o.bidirectional, o.pooling)

    @property
    def groups(self) -> ParallelGroups:
        return self.encoder.groups

    @property
    def hidden_size(self) -> int:
        return self.encoder.spec.hidden_size

    @classmethod
    def load(cls, path, groups: ParallelGroups, options: EncoderOptions = EncoderOptions()) -> Teacher:
        from transformers import AutoTokenizer

        from ..convert.llm import load_teacher_weights, teacher_shard_for
        from .hf_io import _find_gguf

        path = Path(path)
        check_cc_options(path, options)
        spec, shard, meta = teacher_shard_for(path, groups.tp_size, groups.tp_rank)
        encoder = MegatronLlamaEncoder(spec, groups, options)
        load_teacher_weights(encoder, shard)
        encoder.to(groups.device)
        if (path / "teacher.json").is_file():
            tok = AutoTokenizer.from_pretrained(path / "hf")
        else:
            d, gguf = _find_gguf(path)
            d = Path(meta.get("tokenizer_dir") or d)  # an adapter's tokenizer may live in its base
            tok = AutoTokenizer.from_pretrained(d, **({"gguf_file": gguf} if gguf else {}))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return cls(encoder, tok, meta["weights_digest"], str(path))

    def tokenize(self, texts: Sequence[str], max_length: int = 512):
        return tokenize(self.tokenizer, texts, max_length)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64, max_length: int = 512,
                     max_tokens: int | None = None) -> torch.Tensor:
        """Captions -> [N, H] fp32, in input order. Batches are length-bucketed to cut padding.

        Every rank of a TP group must pass the same captions (the offline/extraction path).
        """
        texts = list(texts)
        if not texts:
            raise ValueError("empty caption list: pass at least one caption to encode.")
        ids, mask = self.tokenize(texts, max_length)
        lengths = mask.sum(1).tolist()
        out = torch.empty(len(texts), self.hidden_size, dtype=torch.float32)
        for idx in length_buckets(lengths, batch_size, max_tokens):
            s = max(lengths[i] for i in idx)
            sel = torch.tensor(idx)
            out[sel] = self.encoder.encode(ids[sel, :s], mask[sel, :s]).cpu()
        return out

    @torch.inference_mode()
    def encode_online(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Online TP teacher: each rank passes its OWN captions and gets back exactly their rows.

        The TP group all-gathers its captions, runs one TP forward on the concatenation, and each
        rank keeps its slice (DESIGN, "Parallel layout").
        """
        g = self.groups
        if g.tp_size == 1:
            return self.encoder.encode(input_ids, attention_mask)
        dev = g.device
        ids, rows = tp_gather_rows(input_ids.to(dev), g, pad_value=self.tokenizer.pad_token_id or 0)
        mask, _ = tp_gather_rows(attention_mask.to(dev), g, pad_value=0)
        emb = self.encoder.encode(ids, mask)
        start = sum(rows[: g.tp_rank])
        return emb[start: start + rows[g.tp_rank]]
