"""Stage 1 model: config errors, batch schedule, DP=2 vs DP=1 parity, merged export vs peft and vs
the Megatron teacher, MNTP, .nemo round trip, and a few real steps on SmolLM2."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from dist_utils import run_workers
from llm_fixtures import CAPTIONS, random_word_captions, write_tiny_llama

from llm2clip_nemo.config import ConfigError
from llm2clip_nemo.data.pairs import CaptionRecord, PairConfig
from llm2clip_nemo.models.caption_data import TripleSchedule, collate_triples, load_records, tokenize_with_instruction
from llm2clip_nemo.models.caption_encoder import CaptionEncoder, EncoderConfig, LoRAConfig, export_merged

INSTRUCTION = "w7 w8 w9"
PAIRS = PairConfig(instruction="w7 w8", seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "llm")


def word_records(n, seed=0):
    """Two captions per image (a short and a long one): word-level text the tiny tokenizer knows."""
    caps = random_word_captions(2 * n, seed=seed)
    return [CaptionRecord(str(i), (caps[2 * i],), (caps[2 * i + 1],)) for i in range(n)]


def tiny_encoder(path, seed=0, **kw):
    """LoRA B is zero at init (LoRA A would get no gradient): randomise it so both are tested."""
    torch.manual_seed(seed)
    enc = CaptionEncoder(EncoderConfig(llm_path=str(path), lora=LoRAConfig(dropout=0.0), **kw))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return enc


# ---- config validation ------------------------------------------------------------------------

def _load(overrides):
    from llm2clip_nemo.recipes.caption_contrastive import load

    return load("caption_contrastive_tiny", overrides)


def test_unknown_pooling_is_named():
    with pytest.raises(ConfigError, match=r"model.pooling='max' is not a pooling mode; choose one of mean, last_token"):
        _load(["model.pooling=max"])


def test_global_batch_not_divisible_by_ranks():
    with pytest.raises(ConfigError, match=r"global_batch_size=8 is not divisible by the 3 data-parallel ranks"):
        _load(["trainer.devices=3"])


def test_missing_dataset_path(tmp_path):
    cfg = _load([f"model.data.train_path={tmp_path / 'nope.jsonl'}"])  # validate() reads no file
    with pytest.raises(ConfigError, match=r"model.data.train_path='.*nope.jsonl' does not exist"):
        cfg.model.data.check_paths()  # what the recipe's run() does first


def test_missing_lora_target_lists_available(tiny_dir):
    with pytest.raises(ConfigError, match=r"\['wq', 'mlp_in'\] not found in LlamaForCausalLM; available linear "
                                          r"modules: \['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj'"):
        CaptionEncoder(EncoderConfig(llm_path=str(tiny_dir), lora=LoRAConfig(target_modules=["q_proj", "wq", "mlp_in"])))


def test_lora_on_the_top_layers_only(tiny_dir):
    full = CaptionEncoder(EncoderConfig(llm_path=str(tiny_dir), lora=LoRAConfig(dropout=0.0)))
    top = CaptionEncoder(EncoderConfig(llm_path=str(tiny_dir), lora=LoRAConfig(dropout=0.0, top_layers=1)))
    names = list(top.lora_parameters())
    assert names and all(".layers.1." in n for n in names), names
    assert sorted(names) == sorted(n for n in full.lora_parameters() if ".layers.1." in n)
    batch = collate_triples(top.tokenizer, TripleSchedule(word_records(8), 4, PAIRS).batch(0), 24)
    for p in top.lora_parameters().values():  # non-zero B so that every LoRA weight gets a gradient
        torch.nn.init.normal_(p, std=0.05)
    top.contrastive_loss(batch).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in top.lora_parameters().values())
    with pytest.raises(ConfigError, match=r"model.lora.top_layers=3 but the model has 2 decoder layers: use at most 2"):
        CaptionEncoder(EncoderConfig(llm_path=str(tiny_dir), lora=LoRAConfig(top_layers=3)))


def test_fsdp_on_cpu_is_refused():
    from llm2clip_nemo.recipes.trainer import TrainerConfig, resolve_strategy

    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    with pytest.raises(ConfigError, match="trainer.strategy=fsdp needs CUDA GPUs"):
        resolve_strategy(TrainerConfig(strategy="fsdp"))


def test_llama3_8b_recipe_is_the_papers():
    from llm2clip_nemo.recipes.caption_contrastive import load

    cfg = load("caption_contrastive_llama3_8b", ["model.data.train_path=demo", "model.data.val_path=demo"])
    m = cfg.model
    assert (m.lora.r, m.lora.alpha, m.lora.dropout, m.loss_scale) == (16, 32, 0.05, 50.0)
    assert (m.optim.lr, m.optim.warmup_steps, m.data.global_batch_size, m.data.max_length) == (2e-4, 300, 512, 512)
    assert m.gradient_checkpointing and m.dtype == "bfloat16" and cfg.trainer.devices == 8
    assert sorted(m.lora.target_modules) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"])


# ---- data: deterministic per-step triples, instruction excluded from the pool ----------------

def test_schedule_is_a_function_of_step_and_shards_by_rank():
    recs = word_records(40)
    a, b = TripleSchedule(recs, 8, PAIRS), TripleSchedule(recs, 8, PAIRS)
    assert [a.batch(k) for k in (7, 0, 12)] == [b.batch(k) for k in (7, 0, 12)]  # any order, same batches
    assert a.batch(0) != a.batch(1) and a.batch(0) != a.batch(5)  # pass 2 is reshuffled
    by_caption = {c: r.key for r in recs for c in r.short + r.long}
    for t in a.batch(4):  # query/positive share an image, the hard negative comes from another one
        assert by_caption[t.query] == by_caption[t.positive] != by_caption[t.negative]
    keys = [t.key for k in range(a.steps_per_pass) for t in a.batch(k)]
    assert a.steps_per_pass == 5 and len(set(keys)) == 40  # one pass visits every image once


def test_instruction_tokens_are_not_pooled(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ids, attn, pool = tokenize_with_instruction(tok, ["w1 w2", "w3"], [INSTRUCTION, ""], max_length=16)
    inst = tok(INSTRUCTION, add_special_tokens=False)["input_ids"]
    assert ids[0, :3].tolist() == inst and pool[0].tolist()[:5] == [0, 0, 0, 1, 1]
    assert attn.sum(1).tolist() == [5, 1] and pool.sum(1).tolist() == [2, 1]


def test_caption_records_from_jsonl(tmp_path):
    f = tmp_path / "g.jsonl"
    f.write_text(json.dumps({"id": "a", "captions": ["dog", " a small dog ", ""]}) + "\n")
    assert load_records(str(f), PAIRS) == [CaptionRecord("a", ("dog", "a small dog"), ())]


def test_collate_puts_instruction_on_queries_only(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    triples = TripleSchedule(word_records(8), 4, PAIRS).batch(0)
    b = collate_triples(tok, triples, max_length=32)
    n_inst = len(tok("w7 w8: ", add_special_tokens=False)["input_ids"])
    assert b["input_ids"].shape[0] == 12 and int(b["n"]) == 4 and int(b["h"]) == 1
    assert ((b["attention_mask"] - b["pool_mask"]).sum(1) == torch.tensor([n_inst] * 4 + [0] * 8)).all()


# ---- DP=2 vs DP=1 ---------------------------------------------------------------------------

GLOBAL_BATCH = 8


def _dp_step(rank, world, tiny_dir):
    """Loss of this rank's share of the global batch and the LoRA grads after DDP-style averaging."""
    import torch.distributed as dist

    from llm2clip_nemo.runtime.parallel import init_distributed

    if world > 1:
        init_distributed()
    enc = tiny_encoder(tiny_dir)
    sched = TripleSchedule(word_records(32), GLOBAL_BATCH, PAIRS)
    local = GLOBAL_BATCH // world
    triples = sched.batch(5)[rank * local:(rank + 1) * local]
    batch = collate_triples(enc.tokenizer, triples, max_length=24)
    group = dist.group.WORLD if world > 1 else None
    loss = enc.contrastive_loss(batch, group=group)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in enc.lora_parameters().items()}
    global_loss = loss.detach().clone()
    if world > 1:  # what DDP does: average gradients and (for reporting) losses
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
        dist.all_reduce(global_loss)
        global_loss /= world
    return float(global_loss), grads


def test_dp2_equals_dp1_loss_and_lora_grads(tiny_dir):
    ref_loss, ref_grads = _dp_step(0, 1, tiny_dir)
    results = run_workers(_dp_step, 2, tiny_dir)
    assert results[0][0] == pytest.approx(results[1][0], abs=0)
    assert results[0][0] == pytest.approx(ref_loss, rel=1e-5)
    assert len(ref_grads) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    lora_a = [n for n in ref_grads if "lora_A" in n]
    assert all(ref_grads[n].abs().max() > 0 for n in lora_a)
    for n, g in ref_grads.items():
        torch.testing.assert_close(results[0][1][n], g, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(results[1][1][n], g, rtol=1e-4, atol=1e-6)


# ---- merged export --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def merged(tiny_dir, tmp_path_factory):
    enc = tiny_encoder(tiny_dir, seed=4).eval()
    out = export_merged(enc, tmp_path_factory.mktemp("merged") / "hf", max_length=48)
    return enc, out


def test_merged_dir_loads_in_stock_transformers_and_equals_peft(merged):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm2clip_nemo.text.hf_encoder import HFEncoder

    enc, out = merged
    stock = AutoModelForCausalLM.from_pretrained(out)  # no trust_remote_code, plain Llama
    assert type(stock).__name__ == "LlamaForCausalLM" and stock.config.is_causal is not False
    assert not any("lora" in n for n, _ in stock.named_parameters())
    hf = HFEncoder(stock, AutoTokenizer.from_pretrained(out), "mean", bidirectional=True)
    texts = random_word_captions(12, seed=9)
    ids, mask = hf.tokenize(texts)
    cos = F.cosine_similarity(hf.encode(ids, mask), enc.encoder.encode(ids, mask))
    assert cos.min() >= 0.99999
    # LoRA really changed the model: the base checkpoint gives different embeddings
    base = HFEncoder.from_pretrained(enc.cfg.llm_path)
    assert F.cosine_similarity(base.encode(ids, mask), hf.encode(ids, mask)).min() < 0.9999


def test_merged_through_megatron_teacher_equals_hf(merged, tmp_path):
    from llm2clip_nemo.convert.llm import import_llm
    from llm2clip_nemo.formats.contract import TeacherContract
    from llm2clip_nemo.runtime import init_parallel
    from llm2clip_nemo.text.hf_encoder import HFEncoder
    from llm2clip_nemo.text.teacher import Teacher

    _, out = merged
    mdir = import_llm(out, tmp_path / "megatron", tp=1)
    teacher = Teacher.load(mdir, init_parallel(1))
    # the contract stage 1 trained with travels through import-llm
    assert teacher.contract == TeacherContract(bidirectional=True, pooling="mean", max_length=48,
                                               text_preparation="plain", pool_special_tokens=False)
    texts = random_word_captions(16, seed=11)
    ours = teacher.encode_texts(texts, batch_size=5)
    hf = HFEncoder.from_pretrained(out, pooling="mean", bidirectional=True)
    ref = hf.encode(*hf.tokenize(texts))
    assert F.cosine_similarity(ours, ref).min() >= 0.9999
    # the teacher refuses another attention mode
    with pytest.raises(ConfigError, match=r"^teacher.bidirectional=False disagrees with the teacher contract "
                                          r"\(bidirectional=True in .*/megatron/hf/teacher_contract.json\): "):
        Teacher.load(mdir, init_parallel(1), dataclasses.replace(teacher.contract, bidirectional=False))


# ---- MNTP -----------------------------------------------------------------------------------

def test_mntp_predicts_masked_tokens_from_previous_position(tiny_dir):
    enc = tiny_encoder(tiny_dir)
    batch = collate_triples(enc.tokenizer, TripleSchedule(word_records(8), 4, PAIRS).batch(0), 24)
    loss = enc.mntp_loss(batch, torch.Generator().manual_seed(0))
    # reference: re-derive the same corruption and score it by hand
    g = torch.Generator().manual_seed(0)
    ids, cand = batch["input_ids"], batch["pool_mask"].bool().clone()
    cand[:, 0] = False
    sel = cand & (torch.rand(ids.shape, generator=g) < 0.2)
    action = torch.rand(ids.shape, generator=g)
    rand_tok = torch.randint(0, 101, ids.shape, generator=g)
    corrupted = ids.clone()
    corrupted[sel & (action < 0.8)] = enc.mask_token_id()
    swap = sel & (action >= 0.8) & (action < 0.9)
    corrupted[swap] = rand_tok[swap]
    logits = enc.peft_model(input_ids=corrupted, attention_mask=batch["attention_mask"]).logits
    rows, cols = sel.nonzero(as_tuple=True)
    ref = F.cross_entropy(logits[rows, cols - 1], ids[rows, cols])
    assert int(sel.sum()) > 3
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert enc.cfg.bidirectional and enc.peft_model.config.is_causal is False


# ---- NeMo .nemo round trip ------------------------------------------------------------------

def test_nemo_save_restore_roundtrip(tiny_dir, tmp_path):
    from llm2clip_nemo.models.caption_contrastive import CaptionContrastiveModel, CaptionContrastiveModelConfig

    cfg = CaptionContrastiveModelConfig(llm_path=str(tiny_dir), lora=LoRAConfig(dropout=0.0))
    torch.manual_seed(0)
    model = CaptionContrastiveModel(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.eval()
    model.save_to(str(tmp_path / "m.nemo"))
    back = CaptionContrastiveModel.restore_from(str(tmp_path / "m.nemo"), map_location=torch.device("cpu"))
    back.eval()
    texts = random_word_captions(6, seed=2)
    torch.testing.assert_close(back.embed_texts(texts), model.embed_texts(texts), rtol=0, atol=0)
    assert back.schema.lora.r == 16 and type(back).__name__ == "CaptionContrastiveModel"


# ---- the embedded default: a few real steps -------------------------------------------------

def test_smollm2_loss_decreases(smollm2_dir):
    torch.manual_seed(0)
    enc = CaptionEncoder(EncoderConfig(llm_path=str(smollm2_dir), lora=LoRAConfig(dropout=0.0)))
    recs = [CaptionRecord(str(i), (CAPTIONS[2 * i],), (CAPTIONS[2 * i + 1],)) for i in range(6)]
    pairs = PairConfig(instruction="Given a caption, retrieve a detailed relevant caption")
    batch = collate_triples(enc.tokenizer, TripleSchedule(recs, 6, pairs).batch(0), 48)
    opt = torch.optim.AdamW(list(enc.lora_parameters().values()), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = enc.contrastive_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[2] < losses[0] * 0.8, losses
