"""Text preparation: captions -> token ids, attention mask and pool mask, as a teacher contract
(`formats.contract.TeacherContract`) says.

Text preparations (`prepare_texts` returns right-padded ids, attention mask and pool mask):

  plain           [special prefix the tokenizer adds, e.g. BOS] + instruction tokens + caption
                  tokens, cut to max_length; caption tokens pooled (plus the prefix when
                  pool_special_tokens). Stage 1 (`models.caption_data`) trains with exactly this.
  llm2vec_llama3  llm2vec's Llama-3 preparation (McGill-NLP/llm2vec, llm2vec/llm2vec.py:
                  `_convert_to_str`, `prepare_for_tokenization`, `tokenize`, `get_pooling` with
                  skip_instruction), which LLM2CLIP's extraction forces for all its teachers:
                  "<|start_header_id|>user<|end_header_id|>\\n\\n" + (instruction + caption).strip()
                  + "<|eot_id|>", tokenized with the tokenizer's BOS; the pooled tokens are the last
                  n of the row, n = the length of "caption<|eot_id|>" tokenized alone.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import ConfigError
from ..config.paths import field_path
from ..formats.contract import TeacherContract

LLM2VEC_SEPARATOR = "!@#$%^&*()"
LLAMA3_USER_HEADER = "<|start_header_id|>user<|end_header_id|>\n\n"
LLAMA3_EOT = "<|eot_id|>"


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _plain_row(tokenizer, text: str, instruction: str, c: TeacherContract, prefix: list[int],
               length_field: str) -> tuple[list, list]:
    cap = _ids(tokenizer, text, False)
    ins = _ids(tokenizer, instruction, False) if instruction else []
    budget = c.max_length - len(prefix) - len(ins)
    if budget < 1:
        raise ConfigError(f"{length_field}={c.max_length} leaves no room for a caption after the "
                          f"{len(prefix) + len(ins)}-token prefix and instruction: raise max_length or shorten "
                          "the instruction.")
    cap = cap[:budget]
    pooled_prefix = 1 if c.pool_special_tokens else 0
    return prefix + ins + cap, [pooled_prefix] * len(prefix) + [0] * len(ins) + [1] * len(cap)


def _llm2vec_doc_cut(tokenizer, text: str, c: TeacherContract) -> str:
    """llm2vec `_convert_to_str`: cut a caption by words until it fits doc_max_length tokens."""
    if not c.doc_max_length:
        return text
    n = len(_ids(tokenizer, text, False)[: c.max_length])
    while n > c.doc_max_length:
        keep = int(len(text.split()) * (c.doc_max_length / n))
        text = " ".join(text.split()[:keep])
        n = len(_ids(tokenizer, text, False)[: c.max_length])
    return text


def _llm2vec_llama3_row(tokenizer, text: str, c: TeacherContract) -> tuple[list, list]:
    text = _llm2vec_doc_cut(tokenizer, text, c)
    joined = (f"{c.instruction.strip()} {LLM2VEC_SEPARATOR}{text}" if c.instruction
              else f"{LLM2VEC_SEPARATOR}{text}")
    prepared = LLAMA3_USER_HEADER + joined.strip() + LLAMA3_EOT
    parts = prepared.split(LLM2VEC_SEPARATOR)
    embedded = parts[1] if len(parts) > 1 else ""
    ids = _ids(tokenizer, "".join(parts), True)[: c.max_length]
    n = min(len(_ids(tokenizer, embedded, False)[: c.max_length]), len(ids))
    return ids, [0] * (len(ids) - n) + [1] * n


def check_llama3_tokens(tokenizer, contract: TeacherContract) -> None:
    """llm2vec_llama3 needs Llama-3's chat tokens as single special tokens (ConfigError naming the
    `contract`'s text_preparation field by its config path, `config.paths`)."""
    field = field_path(contract, "text_preparation")
    vocab = tokenizer.get_vocab()
    missing = [t for t in ("<|start_header_id|>", "<|end_header_id|>", LLAMA3_EOT) if t not in vocab]
    if missing:
        raise ConfigError(f"{field}=llm2vec_llama3 needs a Llama-3 tokenizer, but the teacher's "
                          f"tokenizer lacks {missing}: set {field}=plain.")


def check_texts(texts: Sequence[str]) -> list[str]:
    """The captions as a list; ValueError for an empty list, or naming the positions of blank or
    non-string captions (the caller's list positions)."""
    texts = list(texts)
    if not texts:
        raise ValueError("empty caption list: pass at least one caption to encode.")
    empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if empty:
        raise ValueError(f"captions at positions {empty[:8]} are empty or not strings: drop or fill them before encoding.")
    return texts


def prepare_texts(tokenizer, texts: Sequence[str], contract: TeacherContract,
                  instructions: Sequence[str] | None = None, length_field: str | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Captions -> (input_ids, attention_mask, pool_mask), each [N, S] long, right-padded to the
    longest row (S <= contract.max_length). pool_mask is 1 on the tokens pooled into the caption
    vector. `instructions` (plain only) overrides the contract's instruction per row (stage 1
    puts one on queries only); `length_field` names max_length's config field in errors (None: the
    contract's, `config.paths.field_path`). Raises ValueError for an empty list or an empty caption."""
    texts = check_texts(texts)
    length_field = length_field or field_path(contract, "max_length")
    if contract.text_preparation == "llm2vec_llama3":
        if instructions is not None:
            raise ValueError("per-row instructions are a plain-preparation feature; llm2vec_llama3 takes the "
                             "contract's instruction.")
        check_llama3_tokens(tokenizer, contract)
        rows = [_llm2vec_llama3_row(tokenizer, t, contract) for t in texts]
    else:
        prefix = _ids(tokenizer, "", True)  # e.g. BOS for Llama tokenizers, nothing for GPT-2-style ones
        inst = list(instructions) if instructions is not None else [contract.instruction] * len(texts)
        rows = [_plain_row(tokenizer, t, i, contract, prefix, length_field) for t, i in zip(texts, inst)]
    s = max(len(r) for r, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), s), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), s), dtype=torch.long)
    pool = torch.zeros((len(rows), s), dtype=torch.long)
    for i, (r, pm) in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        attn[i, :len(r)] = 1
        pool[i, :len(r)] = torch.tensor(pm)
    return ids, attn, pool
