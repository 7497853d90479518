"""HF <-> Megatron teacher conversion: bit-exact round trips, any TP, clear errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from llm_fixtures import write_tiny_llama
from safetensors.torch import load_file

from llm2clip_nemo.cli import main as cli_main
from llm2clip_nemo.formats.hf_io import CheckpointError, load_hf_causal_lm
from llm2clip_nemo.formats.llama_keymap import hf_to_megatron, megatron_to_hf
from llm2clip_nemo.formats.llama_spec import LlamaSpec, UnsupportedModelError
from llm2clip_nemo.formats.teacher_dir import read_hf_checkpoint, read_teacher_meta


def _assert_bit_exact(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("tp", [1, 3])
def test_smollm2_round_trip_bit_exact(smollm2_dir, smollm2_tp3, tmp_path, tp):
    hf = tmp_path / "hf"
    if tp == 3:
        mg = smollm2_tp3  # written by convert.llm.import_llm, the function behind the CLI
    else:
        mg = tmp_path / "mg"
        assert cli_main(["convert", "import-llm", "--hf", str(smollm2_dir), "--out", str(mg), "--tp", "1"]) == 0
    meta = read_teacher_meta(mg)
    assert meta["tp"] == tp and len(list(mg.glob("mp_rank_*/model.safetensors"))) == tp
    # each rank holds 1/tp of the query heads: (9 q + 3 k + 3 v heads) * 64 rows / tp
    shard0 = load_file(mg / "mp_rank_00" / "model.safetensors")
    assert shard0["decoder.layers.0.self_attention.linear_qkv.weight"].shape == (15 * 64 // tp, 576)
    assert cli_main(["convert", "export-llm", "--megatron", str(mg), "--out", str(hf)]) == 0
    _assert_bit_exact(load_file(smollm2_dir / "model.safetensors"), load_file(hf / "model.safetensors"))
    if tp == 3:  # stock transformers loads the export
        model, tok = load_hf_causal_lm(hf)
        assert model.config.num_key_value_heads == 3 and tok("dog")["input_ids"]


@pytest.mark.parametrize("tied,tp", [(False, 2), (True, 1), (False, 1)])
def test_tiny_llama_keymap_round_trip(tmp_path, tied, tp):
    path = write_tiny_llama(tmp_path / "tiny", vocab=101, tied=tied)
    spec, sd, _ = read_hf_checkpoint(path)
    shards = hf_to_megatron(sd, spec, tp)
    # vocab 101 is padded to a multiple of tp with zero rows
    emb = shards[-1]["embedding.word_embeddings.weight"]
    assert sum(s["embedding.word_embeddings.weight"].shape[0] for s in shards) == -(-101 // tp) * tp
    if tp == 2:
        assert torch.equal(emb[-1], torch.zeros_like(emb[-1]))
    assert ("output_layer.weight" in shards[0]) == (not tied)
    _assert_bit_exact(sd, megatron_to_hf(shards, spec))


def test_qkv_layout_groups_heads_per_query_group(tmp_path):
    """Megatron's fused QKV holds, per KV group, its query heads then its k and v head."""
    spec = LlamaSpec(vocab_size=8, hidden_size=8, num_layers=1, num_heads=4, num_kv_heads=2, ffn_hidden_size=4, head_dim=2)
    q = torch.arange(8).repeat_interleave(8).view(8, 8).float()            # row i = q row i
    k = 100 + torch.arange(4).repeat_interleave(8).view(4, 8).float()
    v = 200 + torch.arange(4).repeat_interleave(8).view(4, 8).float()
    from llm2clip_nemo.formats.llama_keymap import split_tensor

    (fused,) = split_tensor((q, k, v), "qkv", spec, 1)
    assert fused[:, 0].tolist() == [0, 1, 2, 3, 100, 101, 200, 201, 4, 5, 6, 7, 102, 103, 202, 203]
    r0, r1 = split_tensor((q, k, v), "qkv", spec, 2)
    assert r1[:, 0].tolist() == [4, 5, 6, 7, 102, 103, 202, 203]


def test_reshard_on_load_equals_direct(tmp_path):
    """A teacher stored at TP=2 loads at TP=1 (merged) with the same weights as from HF."""
    from llm2clip_nemo.convert.llm import import_llm
    from llm2clip_nemo.formats.teacher_dir import teacher_shard_for

    path = write_tiny_llama(tmp_path / "tiny", vocab=100)
    mg = import_llm(path, tmp_path / "mg", tp=2)
    _, from_mg, meta = teacher_shard_for(mg, 1, 0)
    _, from_hf, meta_hf = teacher_shard_for(path, 1, 0)
    _assert_bit_exact(from_mg, from_hf)
    assert meta["weights_digest"] == meta_hf["weights_digest"]


# ---- bad input -----------------------------------------------------------------------------------

def test_import_refuses_tp_that_does_not_divide(smollm2_dir, tmp_path, capsys):
    rc = cli_main(["convert", "import-llm", "--hf", str(smollm2_dir), "--out", str(tmp_path / "x"), "--tp", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--tp=2 does not divide num_attention_heads=9" in err and "Use one of [1, 3]" in err
    assert not (tmp_path / "x").exists()


def test_unsupported_architecture(tmp_path):
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match=r"model_type 'gpt2' \(architectures \['GPT2LMHeadModel'\]\) is not supported; supported families: llama"):
        read_hf_checkpoint(d)


def test_missing_and_truncated_checkpoint(tmp_path):
    path = write_tiny_llama(tmp_path / "tiny")
    with pytest.raises(CheckpointError, match="does not exist: pass a Hugging Face model directory"):
        read_hf_checkpoint(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"has config.json but no \*.safetensors weights"):
        read_hf_checkpoint(broken)
    data = (path / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"model.safetensors is truncated: .* re-download or re-convert it"):
        read_hf_checkpoint(broken)


def test_megatron_dir_missing_shard(tmp_path):
    from llm2clip_nemo.convert.llm import import_llm

    mg = import_llm(write_tiny_llama(tmp_path / "tiny"), tmp_path / "mg", tp=2)
    (mg / "mp_rank_01" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"mp_rank_01/model.safetensors is missing: the teacher was written for tp=2"):
        read_teacher_meta(mg)
