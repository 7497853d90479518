"""Capacity planner: counts against published/analytic numbers and the ViT the code builds."""
from __future__ import annotations

import json

import pytest

from llm2clip_nemo.launch import plan as P

VIT_L14 = dict(width=1024, layers=24, heads=16, mlp_dim=4096, patch_size=14, image_size=224, embed_dim=768)
LLAMA3_8B = dict(preset="llama-3-8b", seq_len=77, tensor_parallel=4)


def test_vit_l14_forward_is_162_gflop():
    """The commonly quoted ViT-L/14@224 forward cost (e.g. the open_clip model profile table)."""
    assert P.vit_forward_flops(P.vision_shape(VIT_L14)) == pytest.approx(162e9, rel=0.01)


def test_vit_l14_params_match_openai_clip():
    # HF openai/clip-vit-large-patch14 vision_model (303,179,776) + visual_projection (1024 x 768)
    assert P.vit_param_count(1024, 24, 4096, 14, 224, embed_dim=0) == 303_179_776
    assert P.vit_param_count(1024, 24, 4096, 14, 224, embed_dim=768) == 303_966_208


def test_vit_param_count_matches_the_vit_config_of_the_built_model():
    """ViTConfig.num_params() is checked against the built megatron ViT and HF in test_vision."""
    from llm2clip_nemo.vision.config import PRESETS

    for name, cfg in PRESETS.items():
        got = P.vit_param_count(cfg.width, cfg.num_layers, cfg.mlp_dim, cfg.patch_size, cfg.image_size,
                                cfg.num_channels, cfg.embed_dim)
        assert got == cfg.num_params(), name
        assert P.vit_forward_flops(P.vision_shape(cfg)) == pytest.approx(cfg.forward_flops(), rel=1e-9), name


def test_llama_param_counts_match_published_models():
    t = P.teacher_shape(LLAMA3_8B)
    assert P.llama_param_count(t, include_lm_head=True) == 8_030_261_248  # Meta-Llama-3-8B
    smol = P.teacher_shape({"preset": "smollm2-135m"})
    assert P.llama_param_count(smol) == 134_515_008  # SmolLM2-135M (tied embeddings: no separate head)


def test_llama3_8b_caption_flops():
    t = P.teacher_shape(LLAMA3_8B)
    # the "2 * N * tokens" convention (N = 8.03B, LM head counted): ~1.2 TFLOP per 77-token caption
    assert P.llama_forward_flops(t, include_lm_head=True) == pytest.approx(1.2e12, rel=0.05)
    # as an encoder (no LM head, embedding is a lookup): matmuls of the 32 blocks plus attention
    non_embedding = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 4096
    assert P.llama_forward_flops(t) == 2 * 77 * non_embedding + 4 * 32 * 77**2 * 4096


def test_offline_storage_2b_samples_is_16_tb():
    assert P.offline_storage_bytes(2e9, 1, 4096, 2) == pytest.approx(16.4e12, rel=0.01)
    r = P.plan(VIT_L14, LLAMA3_8B, batch=1024, gpus=8, samples=2e9, captions_per_sample=2)
    assert r["offline_storage_bytes"] == 2e9 * 2 * 4096 * 2


def test_activation_memory_follows_korthikanti():
    v = P.vision_shape(VIT_L14)
    s, w, b, a = 257, 1024, 8, 16
    assert P.vit_activation_bytes(v, b, recompute=False) == 24 * 34 * s * b * w
    assert P.vit_activation_bytes(v, b, recompute=False, fused_attention=False) == 24 * (34 * s * b * w + 5 * a * s * s * b)
    assert P.vit_activation_bytes(v, b, recompute=True) == 24 * 2 * s * b * w + 34 * s * b * w


def test_plan_throughput_memory_and_modes():
    online = P.plan(VIT_L14, LLAMA3_8B, batch=32768, gpus=256, mfu=0.4, samples=2e9)
    assert online["samples_per_s"] * online["model_flops_per_sample"] == pytest.approx(256 * 989e12 * 0.4)
    assert online["wall_time_s"] == pytest.approx(2e9 / online["samples_per_s"])
    assert online["model_flops_per_sample"] == pytest.approx(3 * 162e9 + 1.08e12, rel=0.01)
    p = online["vision_params"]
    assert (online["mem_params"], online["mem_grads"], online["mem_optimizer"]) == (4 * p, 4 * p, 8 * p)
    assert online["mem_teacher_weights"] == 2 * 7_504_924_672 / 4  # bf16 shard of a TP=4 teacher
    offline = P.plan(VIT_L14, {**LLAMA3_8B, "mode": "offline"}, batch=32768, gpus=256, samples=2e9)
    assert offline["teacher_flops_per_sample"] == 0 and offline["mem_teacher"] == 0
    assert offline["samples_per_s"] > 3 * online["samples_per_s"]  # the teacher dominates online cost
    zero = P.plan(VIT_L14, None, batch=32768, gpus=256, distributed_optimizer=True, recompute=True)
    assert zero["mem_optimizer"] == 8 * p / 256
    assert zero["mem_activations"] == zero["mem_activations_recompute"] < zero["mem_activations_no_recompute"]
    assert zero["hardware_flops_per_sample"] == 4 * zero["vision_forward_flops"]


@pytest.mark.parametrize("kwargs,teacher,match", [
    (dict(batch=1000, gpus=256), None, "batch=1000 is not divisible by gpus=256"),
    (dict(batch=1024, gpus=8, mfu=1.5), None, r"mfu=1.5 must be in \(0, 1\]"),
    (dict(batch=1024, gpus=8), {**LLAMA3_8B, "tensor_parallel": 3}, "teacher.tensor_parallel=3 does not divide teacher.heads=32"),
    (dict(batch=1024, gpus=8), {**LLAMA3_8B, "mode": "cached"}, "teacher.mode='cached'"),
])
def test_plan_errors_name_the_field(kwargs, teacher, match):
    with pytest.raises(ValueError, match=match):
        P.plan(VIT_L14, teacher, **kwargs)


def test_vision_section_missing_field_error():
    with pytest.raises(ValueError, match="vision.mlp_dim is missing"):
        P.vision_shape({k: v for k, v in VIT_L14.items() if k != "mlp_dim"})


def test_plan_cli_reads_nested_config_and_overrides(tmp_path, capsys):
    (tmp_path / "big.yaml").write_text(
        "trainer:\n  num_nodes: 4\n  devices: 8\n"
        "model:\n  vision:\n    width: 1024\n    num_layers: 24\n    num_heads: 16\n    mlp_dim: 4096\n"
        "    patch_size: 14\n    image_size: 224\n    embed_dim: 768\n"
        "  teacher:\n    preset: llama-3-8b\n    tensor_parallel: 4\n    mode: online\n")
    argv = ["--config-path", str(tmp_path), "--config-name", "big", "plan.batch=4096", "plan.samples=1e9", "--json"]
    assert P.main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    want = P.plan(VIT_L14, LLAMA3_8B, batch=4096, gpus=32, samples=1e9)
    assert got["gpus"] == 32 and got["samples_per_s"] == pytest.approx(want["samples_per_s"])
    assert got["mem_total"] == pytest.approx(want["mem_total"])
    assert P.main(argv[:-1]) == 0
    table = capsys.readouterr().out
    assert "vision forward / image" in table and "162 GFLOP" in table and "16.4 TB" not in table


def test_plan_cli_errors(tmp_path, capsys):
    (tmp_path / "novision.yaml").write_text("trainer:\n  num_nodes: 1\n")
    assert P.main(["--config-path", str(tmp_path), "--config-name", "novision"]) == 2
    assert "no vision section" in capsys.readouterr().err
    assert P.main(["--config-path", str(tmp_path), "--config-name", "absent"]) == 2
    assert "config 'absent' not found" in capsys.readouterr().err


def test_teacher_shape_from_hf_config_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152}))
    t = P.teacher_shape({"path": str(tmp_path), "tensor_parallel": 3, "seq_len": 64})
    assert (t.hidden, t.layers, t.kv_heads, t.tensor_parallel, t.seq_len) == (576, 30, 3, 3, 64)
    assert P.llama_param_count(t) == 134_515_008


def test_extract_plan_from_an_extract_config(tmp_path, capsys):
    (tmp_path / "ex.yaml").write_text(
        "teacher:\n  path: /ckpt/megatron-tp8\n  tensor_parallel: 8\n  max_length: 77\n"
        "data:\n  fields: [txt, long]\n  storage_dtype: bf16\nprojection:\n  samples: 2.0e+9\n  gpus: 512\n")
    argv = ["--config-path", str(tmp_path), "--config-name", "ex", "teacher.preset=llama-3-8b", "--json"]
    assert P.main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["gpus"] == 512 and r["captions_per_sample"] == 2
    assert r["offline_storage_bytes"] == 2e9 * 2 * 4096 * 2
    assert r["captions_per_s"] * r["teacher_forward_flops_per_caption"] == pytest.approx(512 * 989e12 * 0.4)
    assert r["extract_wall_time_s"] == pytest.approx(4e9 / r["captions_per_s"])
    assert P.main(argv[:-2]) == 2  # megatron checkpoint dir: no HF config.json to read the shape from
    assert "teacher.hidden is missing" in capsys.readouterr().err
