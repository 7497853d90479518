"""Every supported family x layout: `import-llm` at TP=1 and TP=2 embeds like transformers' own
forward of the same checkpoint; `export-llm` gives the stored tensors back; bad input exits 2."""
from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from dist_utils import run_workers
from family_fixtures import FAMILIES, LAYOUTS, captions, load_reference, write_family, write_lora
from safetensors.torch import load_file

from llm2clip_nemo.cli import main as cli_main
from llm2clip_nemo.convert.llm import import_llm
from llm2clip_nemo.formats.contract import TeacherContract
from llm2clip_nemo.runtime import init_parallel
from llm2clip_nemo.text.hf_encoder import HFEncoder
from llm2clip_nemo.text.megatron_encoder import EncoderOptions
from llm2clip_nemo.text.teacher import Teacher

CASES = [(f, lay) for f in FAMILIES for lay in LAYOUTS]
LENGTHS = (10, 300)  # tokens per caption, about
CONTRACT = TeacherContract(bidirectional=True, pooling="mean", max_length=512)
"""Embed as the HFEncoder reference does: bidirectional, mean over the caption tokens, 512 tokens."""
LONG = {"max_length": 512}


@pytest.fixture(scope="module")
def groups():
    return init_parallel(1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """{(family, layout): (hf dir, tp1 dir, tp2 dir, {length: (captions, transformers' embeddings)})}."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("zoo")
    out = {}
    for fam, lay in CASES:
        src = write_family(root / f"{fam}-{lay}", fam, lay)
        tp1 = root / f"{fam}-{lay}-tp1"
        assert cli_main(["convert", "import-llm", "--hf", str(src), "--out", str(tp1), "--tp", "1",
                         "--max-length", "512"]) == 0
        tp2 = import_llm(src, root / f"{fam}-{lay}-tp2", tp=2, contract=LONG)
        ref = HFEncoder(load_reference(src, lay), AutoTokenizer.from_pretrained(src), "mean", bidirectional=True)
        refs = {}
        for n in LENGTHS:
            caps = captions(fam, n, 3, seed=n)
            refs[n] = (caps, ref.encode(*ref.tokenize(caps)))
        out[fam, lay] = (src, tp1, tp2, refs)
    return out


def _source_tensors(src, layout):
    """The tensors stored in the source (adapters: peft's own merge of the adapter into its base)."""
    if layout == "adapter":
        return {k: v.contiguous() for k, v in load_reference(src, layout).state_dict().items()}
    files = sorted(src.glob("*.safetensors"))
    sd = {}
    for f in files:
        sd.update(load_file(f))
    return sd


@pytest.mark.parametrize("family,layout", CASES)
def test_tp1_matches_transformers_and_exports_bit_exact(zoo, groups, tmp_path, family, layout):
    src, tp1, _, refs = zoo[family, layout]
    meta = json.loads((tp1 / "teacher.json").read_text())
    assert meta["spec"]["family"] == ("llama" if family == "llama3" else family)
    assert meta["hf_layout"] == ("causal" if layout in ("causal", "sharded") else "bare")
    teacher = Teacher.load(tp1, groups, CONTRACT)
    for n, (caps, ref) in refs.items():
        ids, _, _ = teacher.prepare(caps)
        assert ids.shape[1] >= 0.8 * n  # the long captions really are ~300 tokens
        cos = F.cosine_similarity(teacher.encode_texts(caps), ref)
        assert cos.min().item() >= 0.9999, (n, cos)
    out = tmp_path / "export"
    assert cli_main(["convert", "export-llm", "--megatron", str(tp1), "--out", str(out)]) == 0
    exported, stored = load_file(out / "model.safetensors"), _source_tensors(src, layout)
    assert sorted(exported) == sorted(stored)
    for k in stored:
        assert exported[k].dtype == stored[k].dtype and torch.equal(exported[k], stored[k]), k


def _tp2_worker(rank, world, cases):
    from llm2clip_nemo.runtime import init_parallel
    from llm2clip_nemo.text.teacher import Teacher

    g = init_parallel(world)
    out = {}
    for key, path, texts in cases:
        t = Teacher.load(path, g, CONTRACT)
        out[key] = {n: t.encode_texts(caps) for n, caps in texts.items()}
    return out


def test_tp2_every_family_and_layout_matches_transformers(zoo):
    """One 2-process gloo job loads all 20 teachers written by `import_llm(tp=2)` (Qwen2's fused
    q/k/v bias and the vocab padding are split across the ranks)."""
    cases = [(key, str(tp2), {n: caps for n, (caps, _) in refs.items()}) for key, (_, _, tp2, refs) in zoo.items()]
    results = run_workers(_tp2_worker, 2, cases)
    for rank_out in results:
        for key, (_, _, _, refs) in zoo.items():
            for n, (_, ref) in refs.items():
                assert F.cosine_similarity(rank_out[key][n], ref).min().item() >= 0.9999, (key, n)


def test_llm2vec_two_stage_adapters_merge_in_order(tmp_path, groups, capsys):
    """llm2vec: an MNTP adapter (shipped with config.json, as its repos do) over the LLM, then a
    supervised adapter over the MNTP-merged model; the hub names in adapter_config.json are not
    local, so the bases come from --base, outermost first."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    base = write_family(tmp_path / "llm", "llama3", "bare")
    mntp = write_lora(base, tmp_path / "mntp", seed=5)
    (mntp / "config.json").write_text((base / "config.json").read_text())
    merged_mntp = PeftModel.from_pretrained(load_reference(base, "bare"), mntp).merge_and_unload()
    merged_mntp.save_pretrained(tmp_path / "mntp-merged")
    sup = write_lora(tmp_path / "mntp-merged", tmp_path / "supervised", seed=6)
    for d, hub in ((mntp, "meta-llama/Meta-Llama-3-8B-Instruct"), (sup, "McGill-NLP/LLM2Vec-mntp")):
        acfg = json.loads((d / "adapter_config.json").read_text())
        acfg["base_model_name_or_path"] = hub
        (d / "adapter_config.json").write_text(json.dumps(acfg))
    out = tmp_path / "mg"
    assert cli_main(["convert", "import-llm", "--hf", str(sup), "--out", str(out),
                     "--base", str(mntp), "--base", str(base), "--max-length", "512"]) == 0
    assert f"wrote Megatron teacher tp=1 to {out} (llama, bare layout, 2 adapter(s) merged; weights sha256" in \
        capsys.readouterr().out
    assert json.loads((out / "teacher.json").read_text())["adapters"] == [str(sup), str(mntp)]
    ref_model = PeftModel.from_pretrained(load_reference(tmp_path / "mntp-merged", "bare"), sup).merge_and_unload()
    ref = HFEncoder(ref_model, AutoTokenizer.from_pretrained(base), "mean", bidirectional=True)
    caps = captions("llama3", 300, 3)
    ours = Teacher.load(out, groups).encode_texts(caps)
    assert F.cosine_similarity(ours, ref.encode(*ref.tokenize(caps))).min().item() >= 0.9999
    exported = tmp_path / "export"
    assert cli_main(["convert", "export-llm", "--megatron", str(out), "--out", str(exported)]) == 0
    got = load_file(exported / "model.safetensors")
    want = ref_model.state_dict()
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_linear_rope_matches_transformers(tmp_path, groups):
    """rope_type linear (factor 4) through megatron-core's seq_len_interpolation_factor."""
    from transformers import AutoTokenizer

    src = write_family(tmp_path / "lin", "llama_linear", "causal")
    mg = import_llm(src, tmp_path / "mg", tp=1, contract=LONG)
    assert json.loads((mg / "teacher.json").read_text())["spec"]["rope_type"] == "linear"
    ref = HFEncoder(load_reference(src, "causal"), AutoTokenizer.from_pretrained(src), "mean", bidirectional=True)
    caps = captions("llama_linear", 300, 3)
    ours = Teacher.load(mg, groups).encode_texts(caps)
    assert F.cosine_similarity(ours, ref.encode(*ref.tokenize(caps))).min().item() >= 0.9999


def test_bare_encoder_auto_map_is_noted_and_ignored(tmp_path, caplog):
    src = write_family(tmp_path / "bare", "llama", "bare")
    with caplog.at_level(logging.WARNING):
        import_llm(src, tmp_path / "mg", tp=1)
    notes = [r.getMessage() for r in caplog.records if "auto_map" in r.getMessage()]
    assert notes == [f"{src}/config.json names remote code in auto_map ['AutoModel']: ignored (remote code is never "
                     "run); the model is built as model_type='llama'."]


def test_llama3_rope_scaling_changes_the_frequencies():
    """The llama3 spec really rescales RoPE (so the parity above tests the scaling, not plain RoPE)."""
    from llm2clip_nemo.formats.llama_spec import LlamaSpec
    from llm2clip_nemo.text.megatron_encoder import rotary_embedding

    d = dict(vocab_size=8, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2, ffn_hidden_size=8,
             rope_theta=500000.0)
    plain = rotary_embedding(LlamaSpec(**d)).inv_freq
    scaled = rotary_embedding(LlamaSpec(**d, rope_type="llama3", rope_factor=32.0)).inv_freq
    assert torch.equal(plain[:3], scaled[:3])  # high frequencies kept
    assert torch.allclose(scaled[-1], plain[-1] / 32)  # the lowest frequency divided by factor
    linear = rotary_embedding(LlamaSpec(**d, rope_type="linear", rope_factor=4.0))
    assert linear.seq_len_interpolation_factor == 4.0


# ---- bad input: one line naming the field and the fix, exit 2, nothing written ----------------

def _import_fails(capsys, src, out, *extra):
    capsys.readouterr()  # drop what writing the fixture printed
    rc = cli_main(["convert", "import-llm", "--hf", str(src), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert err.count("\n") == 1, err
    return err.strip()


def test_unsupported_architecture_exits_2(tmp_path, capsys):
    d = tmp_path / "gemma"
    write_family(d, "llama")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="gemma2", architectures=["Gemma2ForCausalLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    assert _import_fails(capsys, d, tmp_path / "out") == (
        "llm2clip-nemo convert import-llm: error: model_type 'gemma2' (architectures ['Gemma2ForCausalLM']) is not "
        "supported; supported families: llama (Llama 1-3.x), mistral (Mistral), qwen2 (Qwen2/Qwen2.5), qwen3 (Qwen3). "
        "Use a checkpoint of one of these families.")


def test_unsupported_rope_type_exits_2(tmp_path, capsys):
    d = write_family(tmp_path / "longrope", "llama")
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0], "long_factor": [1.0]}
    (d / "config.json").write_text(json.dumps(cfg))
    assert _import_fails(capsys, d, tmp_path / "out") == (
        "llm2clip-nemo convert import-llm: error: rope_scaling rope_type 'longrope' is not supported; supported: "
        "default, linear, llama3 (what megatron-core's RotaryEmbedding implements). Use a checkpoint with one of these.")


def test_missing_adapter_base_exits_2(tmp_path, capsys):
    adapter = write_family(tmp_path / "lora", "qwen2", "adapter")
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    acfg["base_model_name_or_path"] = "Qwen/Qwen2.5-0.5B"
    (adapter / "adapter_config.json").write_text(json.dumps(acfg))
    assert _import_fails(capsys, adapter, tmp_path / "out") == (
        f"llm2clip-nemo convert import-llm: error: {adapter} is a PEFT adapter over "
        "base_model_name_or_path='Qwen/Qwen2.5-0.5B', which is not a local directory: download the base model and "
        "pass it with --base DIR.")
    # the same adapter imports once its base is given
    assert cli_main(["convert", "import-llm", "--hf", str(adapter), "--out", str(tmp_path / "ok"),
                     "--base", str(tmp_path / "lora-base")]) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_param_count_equals_transformers(family):
    """LlamaSpec.param_count (for the planner) counts what transformers' decoder holds."""
    from family_fixtures import causal_model

    from llm2clip_nemo.formats.llama_spec import LlamaSpec

    model = causal_model(family)
    spec = LlamaSpec.from_hf_config(model.config)
    assert spec.param_count() == sum(p.numel() for p in model.model.parameters())
    assert spec.param_count(lm_head=True) == sum(p.numel() for p in model.parameters())


def test_adapter_exports_merged_in_base_layout(zoo, tmp_path):
    """`export-hf`'s llm/ for an adapter teacher: the LoRA merged (bit-exact with peft) into a bare
    decoder directory that the HF encoder loads."""
    from llm2clip_nemo.convert.llm import export_merged_adapter

    src = zoo["qwen2", "adapter"][0]
    out = export_merged_adapter(src, tmp_path / "merged")
    got, want = load_file(out / "model.safetensors"), _source_tensors(src, "adapter")
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    caps, ref = zoo["qwen2", "adapter"][3][10]
    enc = HFEncoder.from_pretrained(out, pooling="mean", bidirectional=True)
    assert F.cosine_similarity(enc.encode(*enc.tokenize(caps)), ref).min().item() >= 0.9999


@pytest.mark.parametrize("change,message", [
    ({"attention_bias": True},
     "attention_bias=True is not supported for llama: only Qwen2's q/k/v biases are (o_proj has none there)."),
    ({"mlp_bias": True}, "mlp_bias=True is not supported: Llama 1-3.x teachers have no MLP biases."),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported; Llama 1-3.x uses silu (SwiGLU)."),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
     "rope_scaling rope_type 'llama3' lacks ['low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings']: "
     "complete config.json's rope_scaling from the model's original release."),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
     "rope_scaling rope_type 'yarn' is not supported; supported: default, linear, llama3 (what megatron-core's "
     "RotaryEmbedding implements). Use a checkpoint with one of these."),
])
def test_config_fields_outside_the_family_are_named(change, message):
    from family_fixtures import causal_model

    from llm2clip_nemo.formats.llama_spec import LlamaSpec, UnsupportedModelError

    cfg = {**causal_model("llama").config.to_dict(), **change}
    with pytest.raises(UnsupportedModelError) as e:
        LlamaSpec.from_hf_config(cfg)
    assert str(e.value) == message


def test_sequence_beyond_sliding_window_is_refused(groups):
    from llm2clip_nemo.formats.llama_spec import LlamaSpec
    from llm2clip_nemo.text.megatron_encoder import MegatronLlamaEncoder

    spec = LlamaSpec(vocab_size=16, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2, ffn_hidden_size=8,
                     family="mistral", sliding_window=8)
    enc = MegatronLlamaEncoder(spec, groups, EncoderOptions(use_te=False))
    with pytest.raises(ValueError) as e:
        enc.hidden_states(torch.ones(1, 9, dtype=torch.long), torch.ones(1, 9, dtype=torch.long))
    assert str(e.value) == ("sequence length 9 exceeds the model's sliding_window=8, which the teacher does not "
                            "reproduce; lower the tokenizer max_length.")


def test_base_without_adapter_exits_2(tmp_path, capsys):
    d = write_family(tmp_path / "plain", "qwen3")
    assert _import_fails(capsys, d, tmp_path / "out", "--base", str(d)) == (
        f"llm2clip-nemo convert import-llm: error: --base {d} is left over: {d} is not a PEFT adapter directory (no "
        "adapter_config.json); pass one --base per adapter, outermost first.")


@pytest.mark.parametrize("family,layout", [("mistral", "bare"), ("qwen3", "adapter"), ("qwen2", "sharded")])
def test_teacher_path_may_be_the_hf_dir_itself(zoo, groups, family, layout):
    """`teacher.path` pointing at the HF directory (converted in memory) embeds the same and carries
    the same fingerprint as its `import-llm` copy (the digest is over canonical keys)."""
    src, tp1, _, refs = zoo[family, layout]
    direct, imported = Teacher.load(src, groups, CONTRACT), Teacher.load(tp1, groups)
    assert direct.fingerprint == imported.fingerprint
    caps, ref = refs[300]
    assert F.cosine_similarity(direct.encode_texts(caps), ref).min().item() >= 0.9999
