"""The Megatron teacher vs the Hugging Face reference, TP layouts, online TP, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dist_utils import run_workers
from llm_fixtures import CAPTIONS, random_word_captions, write_tiny_llama

from llm2clip_nemo.formats.contract import TeacherContract
from llm2clip_nemo.runtime import init_parallel
from llm2clip_nemo.text.hf_encoder import HFEncoder
from llm2clip_nemo.text.teacher import Teacher, length_buckets

MODES = [(True, "mean"), (True, "last_token"), (False, "mean"), (False, "last_token"), (True, "weighted_mean")]


@pytest.fixture(scope="module")
def groups():
    return init_parallel(1)


@pytest.fixture(scope="module")
def hf_smol(smollm2_dir):
    return HFEncoder.from_pretrained(smollm2_dir)


def hf_reference(hf: HFEncoder, texts, bidirectional, pooling):
    from llm2clip_nemo.text.hf_encoder import set_bidirectional

    set_bidirectional(hf.model, bidirectional)
    hf.pooling = pooling
    ids, mask = hf.tokenize(texts)
    return hf.encode(ids, mask)


@pytest.mark.parametrize("bidirectional,pooling", MODES)
def test_smollm2_tp1_matches_hf(smollm2_dir, hf_smol, groups, bidirectional, pooling):
    assert len(CAPTIONS) >= 32
    teacher = Teacher.load(smollm2_dir, groups, TeacherContract(bidirectional=bidirectional, pooling=pooling))
    ours = teacher.encode_texts(CAPTIONS, batch_size=8)  # length-bucketed, padded batches
    ref = hf_reference(hf_smol, CAPTIONS, bidirectional, pooling)  # one padded batch in input order
    cos = F.cosine_similarity(ours, ref)
    assert cos.min().item() >= 0.9999, cos.min()
    assert ours.dtype == torch.float32 and ours.shape == (len(CAPTIONS), 576)


def test_bidirectional_sees_later_tokens(smollm2_dir, groups):
    """Changing the last token moves the first token's state only under bidirectional attention."""
    def first_token_shift(bidirectional):
        t = Teacher.load(smollm2_dir, groups, TeacherContract(bidirectional=bidirectional))
        ids, mask, _ = t.prepare(["a red apple on the table", "a red apple on the chair"])
        with torch.inference_mode():
            h = t.encoder.hidden_states(ids, mask)
        return (h[0, 0] - h[1, 0]).abs().max().item()

    assert first_token_shift(True) > 1e-3
    assert first_token_shift(False) == 0.0


def test_teacher_is_frozen(smollm2_dir, groups):
    t = Teacher.load(smollm2_dir, groups)
    t.encoder.train()
    assert not t.encoder.training
    assert not any(p.requires_grad for p in t.encoder.parameters())
    ids, mask, _ = t.prepare(["dog"])
    assert not t.encoder.encode(ids, mask).requires_grad


def test_length_buckets_cover_all_once_and_cut_padding():
    lengths = [3, 50, 4, 49, 5, 48, 2, 47]
    batches = length_buckets(lengths, max_batch=2)
    assert sorted(i for b in batches for i in b) == list(range(8))
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    naive = sum(max(lengths[i:i + 2]) * 2 for i in range(0, 8, 2))
    assert padded < naive
    assert length_buckets([10, 10, 10], max_batch=8, max_tokens=20) == [[0, 1], [2]]


# ---- tensor parallel over gloo -------------------------------------------------------------------

def _tp_worker(rank, world, path, texts, per_rank_texts):
    from llm2clip_nemo.runtime import init_parallel
    from llm2clip_nemo.text.teacher import Teacher

    g = init_parallel(world)
    t = Teacher.load(path, g)
    offline = t.encode_texts(texts, batch_size=16)  # same captions on every rank
    online = None
    if per_rank_texts:  # each rank its own captions
        online = t.encode_online(per_rank_texts[rank])
    return offline, online, t.fingerprint


def test_smollm2_tp3_matches_tp1_offline_and_online(smollm2_dir, smollm2_tp3, groups):
    """TP=3 over 3 gloo processes (teacher converted by `convert import-llm --tp 3`) vs TP=1.

    Online: distinct captions and batch sizes per rank; each rank must get exactly its own rows.
    """
    ref_t = Teacher.load(smollm2_dir, groups)
    ref = ref_t.encode_texts(CAPTIONS)
    per_rank = [CAPTIONS[0:5], CAPTIONS[5:7], CAPTIONS[7:16]]
    outs = run_workers(_tp_worker, 3, str(smollm2_tp3), CAPTIONS, per_rank)
    for r, (offline, online, fp) in enumerate(outs):
        assert F.cosine_similarity(offline, ref).min().item() >= 0.9999
        assert fp == ref_t.fingerprint  # same weights, same embeddings: same identity
        mine = ref_t.encode_texts(per_rank[r])
        assert online.shape == mine.shape
        sim = F.cosine_similarity(online[:, None], mine[None], dim=-1)  # [returned rows, own captions]
        assert torch.diagonal(sim).min().item() >= 0.9999
        # each row is closest to its own caption, not to another row's
        assert torch.equal(sim.argmax(1), torch.arange(len(per_rank[r])))


def test_tiny_llama_tp2_matches_hf_and_tp1(tmp_path, groups):
    """4 heads / 2 KV groups, untied embeddings, a vocab (101) that TP=2 must pad."""
    path = write_tiny_llama(tmp_path / "tiny", vocab=101, heads=4, kv_heads=2, tied=False)
    texts = random_word_captions(24)
    ref_hf = hf_reference(HFEncoder.from_pretrained(path), texts, True, "mean")
    tp1 = Teacher.load(path, groups).encode_texts(texts)
    assert F.cosine_similarity(tp1, ref_hf).min().item() >= 0.9999
    for offline, _, _ in run_workers(_tp_worker, 2, str(path), texts, None):
        assert F.cosine_similarity(offline, ref_hf).min().item() >= 0.9999


# ---- bad input -----------------------------------------------------------------------------------

def test_tp_not_dividing_heads_is_refused(smollm2_dir):
    from llm2clip_nemo.formats.llama_spec import LlamaSpec

    spec = LlamaSpec(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, ffn_hidden_size=1536)
    with pytest.raises(ValueError, match=r"teacher.tensor_parallel=2 does not divide num_attention_heads=9.*Use one of \[1, 3\]"):
        spec.check_tp(2, "teacher.tensor_parallel")
    spec4 = LlamaSpec(vocab_size=10, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2, ffn_hidden_size=8)
    with pytest.raises(ValueError, match=r"--tp=4 does not divide num_key_value_heads \(query groups\)=2"):
        spec4.check_tp(4, "--tp")


def test_empty_captions_are_refused(smollm2_dir, groups):
    t = Teacher.load(smollm2_dir, groups)
    with pytest.raises(ValueError, match="empty caption list: pass at least one caption"):
        t.encode_texts([])
    with pytest.raises(ValueError, match=r"captions at positions \[1\] are empty"):
        t.encode_texts(["dog", "  "])
