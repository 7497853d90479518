"""Stage 1 (caption-contrastive LoRA) on every family and on the bare-encoder and adapter layouts:
two optimizer steps through CaptionEncoder + collate_triples, bidirectional, default LoRA targets."""
from __future__ import annotations

import math

import pytest
import torch
from family_fixtures import FAMILIES, captions, write_family

from llm2clip_nemo.data.pairs import CaptionRecord, PairConfig
from llm2clip_nemo.models.caption_data import TripleSchedule, collate_triples
from llm2clip_nemo.models.caption_encoder import DEFAULT_TARGETS, CaptionEncoder, EncoderConfig, LoRAConfig

CASES = [(f, "causal") for f in FAMILIES] + [("llama3", "bare"), ("qwen3", "adapter")]


def _records(family, n=8):
    short, long = captions(family, 6, n, seed=1), captions(family, 30, n, seed=2)
    return [CaptionRecord(str(i), (short[i],), (long[i],)) for i in range(n)]


@pytest.mark.parametrize("family,layout", CASES)
def test_two_lora_steps_move_weights_with_finite_loss(tmp_path, family, layout):
    src = write_family(tmp_path / f"{family}-{layout}", family, layout)
    torch.manual_seed(0)
    enc = CaptionEncoder(EncoderConfig(llm_path=str(src), dtype="float32", lora=LoRAConfig(r=4, dropout=0.0)))
    assert enc.cfg.bidirectional and enc.peft_model.config.is_causal is False
    lora = enc.lora_parameters()
    # A and B of the 7 default projections (q,k,v,o,gate,up,down: the same names in all families) x 2 layers
    assert len(lora) == 2 * len(DEFAULT_TARGETS) * 2
    before = {n: p.detach().clone() for n, p in lora.items()}
    opt = torch.optim.AdamW(lora.values(), lr=1e-2)
    sched = TripleSchedule(_records(family), 4, PairConfig(instruction="w7 w8", seed=0))
    losses = []
    for step in range(2):
        batch = collate_triples(enc.tokenizer, sched.batch(step), max_length=48)
        loss = enc.contrastive_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) and v > 0 for v in losses), losses
    moved = [n for n, p in lora.items() if not torch.equal(p.detach(), before[n])]
    assert sorted(moved) == sorted(lora)  # every LoRA A and B moved (B starts at zero, A gets grad by step 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_attention_is_bidirectional_for_every_family(tmp_path, family):
    """`set_bidirectional` works for each family in transformers 5.24: changing the last token moves
    the first token's state only when bidirectional (so no family needs refusing)."""
    from family_fixtures import causal_model

    from llm2clip_nemo.text.hf_encoder import HFEncoder, set_bidirectional

    enc = HFEncoder(causal_model(family), pooling="mean", bidirectional=True)
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 8, 10]])
    mask = torch.ones_like(ids)

    def first_token_shift():
        with torch.no_grad():
            h = enc.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return (h[0, 0] - h[1, 0]).abs().max().item()

    assert first_token_shift() > 1e-4
    set_bidirectional(enc.model, False)
    assert first_token_shift() == 0.0
