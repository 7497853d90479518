"""The teacher contract: llm2vec's Llama-3 preparation against a hand reproduction of llm2vec,
import-llm writing and refusing contracts, the fingerprint covering it, config disagreement."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from llm_fixtures import write_tiny_llama, write_tiny_llama3

from llm2clip_nemo.config import ConfigError
from llm2clip_nemo.formats.contract import TeacherContract, read_contract, write_contract
from llm2clip_nemo.text.preparation import prepare_texts

SEP = "!@#$%^&*()"
LONG = " ".join(f"w{i % 97}" for i in range(60))  # 60 words: cut by doc_max_length below
CAPTIONS = ["w1 w22 w3", "  w5 w6 w70 w8 w9 w10 w11  ", "w42", LONG, "w0 w1 w2, w3. w4!"]


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    return write_tiny_llama3(tmp_path_factory.mktemp("llama3") / "hf")


# ---- llm2vec's algorithm, by hand ----------------------------------------------------------------

def llm2vec_by_hand(model, tokenizer, captions, instruction="", max_length=512, doc_max_length=400):
    """McGill-NLP/llm2vec `LLM2Vec.encode` with LLM2CLIP's Llama-3 `prepare_for_tokenization`
    override, pooling_mode=mean, skip_instruction=True, written out step by step: returns
    (embeddings [N, H], left-padded input_ids, embed_mask)."""
    tok = copy.copy(tokenizer)
    tok.pad_token = tok.eos_token  # LLM2Vec.from_pretrained / LLM2CLIP's extractor
    tok.padding_side = "left"
    sentences = []
    for text in captions:  # _convert_to_str
        n = len(tok(text, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"])
        while n > doc_max_length:
            reduced = int(len(text.split()) * (doc_max_length / n))
            text = " ".join(text.split()[:reduced])
            n = len(tok(text, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"])
        sentences.append(f"{instruction.strip()} {SEP}{text}" if instruction else f"{SEP}{text}")
    prepared = ["<|start_header_id|>user<|end_header_id|>\n\n" + s.strip() + "<|eot_id|>" for s in sentences]
    texts_2, originals = [], []  # tokenize
    for t in prepared:
        parts = t.split(SEP)
        texts_2.append(parts[1] if len(parts) > 1 else "")
        originals.append("".join(parts))
    enc = tok(originals, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    embed_mask = torch.zeros_like(enc["attention_mask"])
    for i, t in enumerate(texts_2):
        n = len(tok([t], padding=True, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"][0])
        if n:
            embed_mask[i, -n:] = 1
    # LlamaBiModel: padding-only attention (a 4D additive mask, no causal part)
    s = enc["input_ids"].shape[1]
    mask4 = torch.zeros(len(captions), 1, s, s)
    mask4.masked_fill_(~enc["attention_mask"].bool()[:, None, None, :], torch.finfo(torch.float32).min)
    with torch.no_grad():
        h = model(input_ids=enc["input_ids"], attention_mask=mask4).last_hidden_state
    lengths = embed_mask.sum(dim=-1)  # get_pooling after _skip_instruction
    emb = torch.stack([h[i, -int(n):, :].mean(dim=0) for i, n in enumerate(lengths)])
    return emb, enc["input_ids"], embed_mask


def _rows(ids, mask):
    return [r[m.bool()].tolist() for r, m in zip(ids, mask)]


@pytest.mark.parametrize("instruction", ["", "Given a caption, retrieve a detailed relevant caption"])
def test_llm2vec_llama3_matches_hand_reproduction(llama3_dir, instruction):
    from transformers import AutoTokenizer, LlamaModel

    from llm2clip_nemo.runtime import init_parallel
    from llm2clip_nemo.text.teacher import Teacher

    contract = TeacherContract(bidirectional=True, pooling="mean", max_length=512, text_preparation="llm2vec_llama3",
                               instruction=instruction, doc_max_length=40)
    tok = AutoTokenizer.from_pretrained(llama3_dir)
    ref, ref_ids, embed_mask = llm2vec_by_hand(LlamaModel.from_pretrained(llama3_dir).eval(), tok, CAPTIONS,
                                               instruction, max_length=512, doc_max_length=40)
    teacher = Teacher.load(llama3_dir, init_parallel(1), contract)
    ids, attn, pool = teacher.prepare(CAPTIONS)
    # the same tokens, and the same pooled tokens (llm2vec's mask is left-padded, ours right-padded)
    ref_attn = (torch.arange(ref_ids.shape[1])[None] >= (ref_ids.shape[1] - attn.sum(1))[:, None]).long()
    assert _rows(ids, attn) == _rows(ref_ids, ref_attn)
    assert pool.sum(1).tolist() == embed_mask.sum(1).tolist()
    assert _rows(ids, pool) == _rows(ref_ids, embed_mask)
    bos, header = tok.bos_token_id, tok.convert_tokens_to_ids("<|start_header_id|>")
    assert ids[:, 0].tolist() == [bos] * len(CAPTIONS) and ids[:, 1].tolist() == [header] * len(CAPTIONS)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert all(r[-1] == eot for r in _rows(ids, pool))  # <|eot_id|> is pooled, the header never
    if instruction:  # the instruction's tokens are in the sequence but not in the mean
        n_inst = len(tok(instruction, add_special_tokens=False)["input_ids"])
        assert (attn.sum(1) - pool.sum(1)).min().item() >= 5 + n_inst - 1
    assert len(tok(LONG, add_special_tokens=False)["input_ids"]) > 40 >= pool[3].sum().item() - 1  # word cut
    ours = teacher.encode_texts(CAPTIONS, batch_size=2)
    cos = F.cosine_similarity(ours, ref)
    assert cos.min().item() >= 0.9999, cos
    # and the contract matters: plain preparation of the same captions is another embedding
    plain = Teacher.load(llama3_dir, init_parallel(1), TeacherContract(max_length=512)).encode_texts(CAPTIONS)
    assert F.cosine_similarity(plain, ref).min().item() < 0.999


def test_llm2vec_llama3_needs_llama3_tokens(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(write_tiny_llama(tmp_path / "tiny"))
    with pytest.raises(ConfigError, match=r"^teacher.text_preparation=llm2vec_llama3 needs a Llama-3 tokenizer, but the "
                                          r"teacher's tokenizer lacks \['<\|start_header_id\|>', '<\|end_header_id\|>', "
                                          r"'<\|eot_id\|>'\]: set teacher.text_preparation=plain.$"):
        prepare_texts(tok, ["w1"], TeacherContract(text_preparation="llm2vec_llama3"))


def test_plain_preparation_pools_caption_tokens_only(llama3_dir):
    """BOS is in the sequence but, as stage 1 trains, not pooled (unless pool_special_tokens)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama3_dir)
    tok.pad_token = tok.eos_token
    ids, attn, pool = prepare_texts(tok, ["w1 w22 w3", "w4"], TeacherContract(max_length=4))
    cap = tok("w1 w22 w3", add_special_tokens=False)["input_ids"]
    assert ids[0].tolist() == [tok.bos_token_id] + cap[:3]  # cut to max_length=4 with BOS
    four = tok("w4", add_special_tokens=False)["input_ids"]
    assert pool[0].tolist() == [0, 1, 1, 1]
    assert _rows(ids, attn)[1] == [tok.bos_token_id] + four and _rows(ids, pool)[1] == four
    _, _, pool_all = prepare_texts(tok, ["w1 w22 w3"], TeacherContract(max_length=4, pool_special_tokens=True))
    assert pool_all[0].tolist() == [1, 1, 1, 1]


# ---- import-llm: reading, asking, refusing ---------------------------------------------------------

def test_import_llm_writes_contract_from_flags_and_llm2vec_config(llama3_dir, tmp_path, capsys):
    import shutil

    from llm2clip_nemo.cli import main as cli_main

    src = tmp_path / "l2v"
    shutil.copytree(llama3_dir, src)
    (src / "llm2vec_config.json").write_text(json.dumps({"pooling_mode": "mean", "max_length": 512,
                                                         "doc_max_length": 400, "skip_instruction": True}))
    rc = cli_main(["convert", "import-llm", "--hf", str(src), "--out", str(tmp_path / "mg"),
                   "--text-preparation", "llm2vec_llama3"])
    assert rc == 0
    got = read_contract(tmp_path / "mg")
    assert got == TeacherContract(bidirectional=True, pooling="mean", max_length=512, text_preparation="llm2vec_llama3",
                                  doc_max_length=400)
    body = json.loads((tmp_path / "mg" / "hf" / "teacher_contract.json").read_text())
    assert body["provenance"]["fields"] == {"bidirectional": "llm2vec_config.json", "pooling": "llm2vec_config.json",
                                            "max_length": "llm2vec_config.json", "text_preparation": "flag",
                                            "instruction": "default", "pool_special_tokens": "default",
                                            "doc_max_length": "llm2vec_config.json"}
    assert capsys.readouterr().out.splitlines()[-1] == ("teacher contract: bidirectional attention, mean pooling, "
                                                         "max 512 tokens, llm2vec_llama3 text preparation")
    # a flag that disagrees with what the source records: one line, exit 2, nothing written
    rc = cli_main(["convert", "import-llm", "--hf", str(src), "--out", str(tmp_path / "bad"), "--max-length", "77"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not (tmp_path / "bad").exists()
    assert err == (f"llm2clip-nemo convert import-llm: error: --max-length 77 disagrees with llm2vec_config.json in "
                   f"{src} (max_length=512): drop --max-length or pass --max-length 512.")
    # a Megatron teacher re-imported keeps its recorded contract; a disagreeing flag is refused
    from llm2clip_nemo.convert.llm import export_llm

    back = export_llm(tmp_path / "mg", tmp_path / "back")
    assert read_contract(back) == got
    rc = cli_main(["convert", "import-llm", "--hf", str(back), "--out", str(tmp_path / "bad2"), "--attention", "causal"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not (tmp_path / "bad2").exists()
    assert err == (f"llm2clip-nemo convert import-llm: error: bidirectional=False disagrees with the teacher contract "
                   f"(bidirectional=True in {back}/teacher_contract.json): drop the flag or set bidirectional=True.")


def test_fingerprint_covers_the_whole_contract():
    from llm2clip_nemo.formats.teacher_dir import teacher_fingerprint

    base = TeacherContract()
    fps = {teacher_fingerprint("d" * 64, c) for c in (
        base, TeacherContract(text_preparation="llm2vec_llama3"), TeacherContract(instruction="x"),
        TeacherContract(max_length=77), TeacherContract(bidirectional=False), TeacherContract(pooling="last_token"),
        TeacherContract(pool_special_tokens=True), TeacherContract(doc_max_length=400))}
    assert len(fps) == 8
    assert teacher_fingerprint("d" * 64, TeacherContract()) == teacher_fingerprint("d" * 64, base)


def test_config_disagreeing_with_contract_is_refused_exit_2_nothing_written(tmp_path, capsys):
    from clip_fixtures import word_shards

    from llm2clip_nemo.cli import main as cli_main
    from llm2clip_nemo.text.config import TeacherConfig

    teacher = write_tiny_llama(tmp_path / "teacher")
    write_contract(teacher, TeacherContract(bidirectional=False, max_length=48))
    shards = word_shards(tmp_path / "shards", 4, 4)
    rc = cli_main(["extract", f"data.urls={shards}", f"teacher.path={teacher}", "teacher.max_length=77",
                   "progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not list(shards.glob("*.emb.tar"))
    assert err[-1] == (f"llm2clip-nemo extract: config error: teacher.max_length=77 disagrees with the teacher contract "
                       f"(max_length=48 in {teacher}/teacher_contract.json): remove teacher.<field> from the config "
                       f"(teacher {teacher}) or set teacher.max_length=48.")
    # a config that leaves a value unset takes the contract's; one that repeats it is fine
    assert TeacherConfig(path=str(teacher)).contract() == TeacherContract(bidirectional=False, max_length=48)
    assert TeacherConfig(path=str(teacher), bidirectional=False, pooling="mean").contract().max_length == 48
