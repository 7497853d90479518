"""Capacity planner: counts against published/analytic numbers and the ViT the code builds."""
from __future__ import annotations

import json

import pytest

from llm2clip_nemo.launch import plan as P

VIT_L14 = dict(width=1024, layers=24, heads=16, mlp_dim=4096, patch_size=14, image_size=224, embed_dim=768)
LLAMA3_8B = dict(preset="llama-3-8b", seq_len=77, tensor_parallel=4)


def test_vit_l14_forward_is_162_gflop():
    """The commonly quoted ViT-L/14@224 forward cost (e.g. the open_clip model profile table)."""
    assert P.plan(VIT_L14, batch=8, gpus=8)["vision_forward_flops"] == pytest.approx(162e9, rel=0.01)


def test_vit_l14_params_match_openai_clip():
    # HF openai/clip-vit-large-patch14 vision_model (303,179,776) + visual_projection (1024 x 768)
    assert P.plan({**VIT_L14, "embed_dim": 0}, batch=8, gpus=8)["vision_params"] == 303_179_776
    assert P.plan(VIT_L14, batch=8, gpus=8)["vision_params"] == 303_966_208


def test_siglip_param_counts_match_transformers():
    # transformers SiglipVisionModel of google/siglip-so400m-patch14-384 and siglip-base-patch16-224
    so400m = dict(width=1152, layers=27, heads=16, mlp_dim=4304, patch_size=14, image_size=384, family="siglip")
    base = dict(width=768, layers=12, heads=12, mlp_dim=3072, patch_size=16, image_size=224, family="siglip")
    assert P.plan(so400m, batch=8, gpus=8)["vision_params"] == 428_225_600
    assert P.plan(base, batch=8, gpus=8)["vision_params"] == 92_884_224


def test_plan_flops_per_sample_are_the_runs_for_every_vit_preset():
    """One count: the plan's training FLOPs per sample are `runtime.flops.train_flops_per_sample` (what a
    run's MFU divides by: 3 x (ViTConfig.forward_flops + the adapter's forward)), equal, not close; and
    its parameters are ViTConfig.num_params + AdapterConfig.num_params."""
    from llm2clip_nemo.runtime.flops import train_flops_per_sample
    from llm2clip_nemo.text.adapter import AdapterConfig
    from llm2clip_nemo.vision.config import PRESETS

    for name, cfg in PRESETS.items():
        for adapter in (AdapterConfig(), AdapterConfig(num_blocks=2, expansion=3)):
            r = P.plan(cfg, LLAMA3_8B, batch=64, gpus=8, adapter=adapter)
            assert r["train_flops_per_sample"] == train_flops_per_sample(cfg, adapter, 4096), name
            assert r["vision_forward_flops"] == cfg.forward_flops(), name
            assert r["vision_params"] == cfg.num_params(), name
            assert r["adapter_params"] == adapter.num_params(4096, cfg.embed_dim), name


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
    p = online["vision_params"] + online["adapter_params"]  # the trainable tower and adapter
    assert online["adapter_params"] == 4 * (2 * 4096 + 2 * 4096 * 8192 + 8192 + 4096) + 2 * 4096 + 4096 * 768
    assert (online["mem_params"], online["mem_grads"], online["mem_optimizer"]) == (4 * p, 4 * p, 8 * p)
    assert online["mem_teacher_weights"] == 2 * 7_504_924_672 / 4  # bf16 shard of a TP=4 teacher
    offline = P.plan(VIT_L14, {**LLAMA3_8B, "mode": "offline"}, batch=32768, gpus=256, samples=2e9)
    assert offline["teacher_flops_per_sample"] == 0 and offline["mem_teacher"] == 0
    assert offline["samples_per_s"] > 3 * online["samples_per_s"]  # the teacher dominates online cost
    zero = P.plan(VIT_L14, None, batch=32768, gpus=256, distributed_optimizer=True, recompute=True)
    assert zero["adapter_params"] == 0  # no teacher, so no adapter input size: the tower alone
    assert zero["mem_optimizer"] == 8 * zero["vision_params"] / 256
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
        "data:\n  urls: /d/{0..9}.tar\n  fields: [txt, long]\n  storage_dtype: bf16\n"
        "projection:\n  samples: 2.0e+9\n  gpus: 512\n")
    argv = ["--config-path", str(tmp_path), "--config-name", "ex", "teacher.preset=llama-3-8b", "--json"]
    assert P.main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["gpus"] == 512 and r["captions_per_sample"] == 2
    assert r["offline_storage_bytes"] == 2e9 * 2 * 4096 * 2
    assert r["captions_per_s"] * r["teacher_forward_flops_per_caption"] == pytest.approx(512 * 989e12 * 0.4)
    assert r["extract_wall_time_s"] == pytest.approx(4e9 / r["captions_per_s"])
    assert P.main([*argv[:-1], "plan.gpus=12"]) == 2  # extract's rule: init_parallel's check_tp, same line
    assert capsys.readouterr().err == ("llm2clip-nemo plan: teacher.tensor_parallel=8 does not divide the world size "
                                       "12: set it to one of [1, 2, 3, 4, 6, 12] or launch a multiple of 8 processes.\n")
    assert P.main(argv[:-2]) == 2  # a Megatron dir that is not on this machine, and no preset
    assert capsys.readouterr().err == (
        "llm2clip-nemo plan: teacher.path='/ckpt/megatron-tp8' is neither a Megatron teacher dir (hf/config.json) "
        "nor a HF model dir (config.json) on this machine: name its shape with plan.teacher_preset=NAME "
        f"({', '.join(sorted(P.TEACHER_PRESETS))}).\n")


# ---------------------------------------------------------------- the recipes' typed configs
S, W, M = 257, 1024, 4096  # ViT-L/14 at 224: 256 patches + class token
VIT_L14_1280_FWD = (2 * 256 * 3 * 14 * 14 * W + 24 * (2 * S * (4 * W * W + 2 * W * M) + 4 * S * S * W)
                    + 2 * W * 1280)  # pretrain_large: projection to 1280
LLAMA3_8B_NONEMB = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 4096
LLAMA3_8B_CAPTION_256 = 2 * 256 * LLAMA3_8B_NONEMB + 4 * 32 * 256**2 * 4096  # max_length 256
ADAPTER_4096_1280_FWD = 2 * (4 * 2 * 4096 * 8192 + 4096 * 1280)  # 4 blocks d -> 2d -> d, then d -> 1280


def run_plan(capsys, *args) -> dict:
    assert P.main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_readme_command_plans_pretrain_large_offline(capsys):
    """`llm2clip-nemo plan --config-name pretrain_large` (README): offline teacher, two caption fields."""
    assert P.main(["--config-name", "pretrain_large"]) == 0
    table = capsys.readouterr().out
    assert "teacher mode" in table
    # 32768 samples / (512 GPUs x 1979e12 FLOP/s x 0.40 / 487.7e9 FLOP per sample) = 39.4 ms, not "0.0 s"
    assert [line.split()[-2:] for line in table.splitlines() if line.startswith("step time")] == [["39.4", "ms"]]
    r = run_plan(capsys, "--config-name", "pretrain_large")
    assert (r["gpus"], r["global_batch"], r["teacher_mode"], r["sidecar_fields"]) == (512, 32768, "offline", 2)
    assert r["vision_forward_flops"] == VIT_L14_1280_FWD
    # no teacher in an offline step; the adapter is trained (3 x its forward)
    assert r["model_flops_per_sample"] == 3 * VIT_L14_1280_FWD + 3 * ADAPTER_4096_1280_FWD
    assert r["hardware_flops_per_sample"] == r["model_flops_per_sample"] + VIT_L14_1280_FWD  # vision.recompute
    assert r["teacher_flops_per_sample"] == 0 and r["mem_teacher"] == 0
    assert r["offline_storage_bytes"] == 1e9 * 2 * 4096 * 2  # txt and long, 4096-d bf16
    assert r["teacher_forward_flops_per_caption"] == LLAMA3_8B_CAPTION_256


def test_online_is_charged_the_teacher_and_offline_is_not(capsys):
    off = run_plan(capsys, "--config-name", "pretrain_large")
    on = run_plan(capsys, "--config-name", "pretrain_large", "model.teacher_mode=online")
    assert on["teacher_flops_per_sample"] == LLAMA3_8B_CAPTION_256  # one caption drawn per sample
    assert on["model_flops_per_sample"] == 3 * VIT_L14_1280_FWD + 3 * ADAPTER_4096_1280_FWD + LLAMA3_8B_CAPTION_256
    assert on["mem_teacher_weights"] == 2 * (LLAMA3_8B_NONEMB + 128256 * 4096) / 8  # bf16 TP=8 shard
    assert off["model_flops_per_sample"] < on["model_flops_per_sample"] and off["mem_total"] < on["mem_total"]
    assert on["samples_per_s"] / off["samples_per_s"] == pytest.approx(off["model_flops_per_sample"]
                                                                       / on["model_flops_per_sample"])
    assert P.main(["--config-name", "pretrain_large", "model.teacher_mode=online"]) == 0
    assert "online (1 caption(s) per sample" in capsys.readouterr().out


def test_preset_overrides_merge_with_the_teacher_section(capsys):
    """A preset changes the shape only: TP and max_length stay the recipe's (or the override's)."""
    qwen3 = P.teacher_shape({"preset": "qwen3-8b"})
    params = P.llama_param_count(qwen3)
    for preset_arg in ("teacher.preset=qwen3-8b", "model.teacher.preset=qwen3-8b", "plan.teacher_preset=qwen3-8b"):
        r = run_plan(capsys, "--config-name", "pretrain_large", "model.teacher_mode=online",
                     "model.teacher.tensor_parallel=4", preset_arg)
        assert r["teacher_params"] == params
        assert r["mem_teacher_weights"] == 2 * params / 4
        nonemb = params - 151936 * 4096
        assert r["teacher_flops_per_sample"] == 2 * 256 * nonemb + 4 * 36 * 256**2 * 32 * 128
    assert P.main(["--config-name", "pretrain_large", "model.teacher.hidden=5"]) == 2
    assert "unknown config field 'model.teacher.hidden'" in capsys.readouterr().err


def test_teacher_shape_from_megatron_and_hf_dirs(tmp_path, capsys):
    smol = {"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152}
    (tmp_path / "meg" / "hf").mkdir(parents=True)
    (tmp_path / "meg" / "teacher.json").write_text("{}")
    (tmp_path / "meg" / "hf" / "config.json").write_text(json.dumps(smol))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(smol))
    for path in (tmp_path / "meg", tmp_path / "hf", "embedded"):
        r = run_plan(capsys, "--config-name", "pretrain_tiny", f"model.teacher.path={path}")
        assert r["teacher_params"] == 134_515_008  # SmolLM2-135M
        assert r["teacher_forward_flops_per_caption"] == 2 * 32 * (134_515_008 - 49152 * 576) + 4 * 30 * 32**2 * 576


def test_presets_match_published_parameter_counts():
    def total(name):
        return P.llama_param_count(P.teacher_shape({"preset": name}), include_lm_head=True)

    assert total("llama-3.1-8b") == total("llama-3-8b") == 8_030_261_248
    assert P.llama_param_count(P.teacher_shape({"preset": "llama-3.2-1b"})) == 1_235_814_400  # tied embeddings
    assert total("mistral-7b") == 7_241_732_096  # Mistral-7B-v0.1
    assert total("qwen2.5-7b") + 28 * (3584 + 2 * 512) == 7_615_616_512  # + its QKV biases
    assert total("qwen3-8b") + 36 * 2 * 128 == 8_190_735_360  # + its q/k norms


def test_plan_cli_errors(capsys):
    assert P.main(["--config-name", "absent"]) == 2
    assert "config 'absent' not found" in capsys.readouterr().err
    assert P.main(["--config-name", "pretrain_large", "plan.teacher_preset=gpt-9"]) == 2
    assert "plan.teacher_preset='gpt-9' is unknown: choose one of llama-3-70b," in capsys.readouterr().err
    assert P.main(["--config-name", "pretrain_large", "plan.mfu=2"]) == 2
    assert capsys.readouterr().err == "llm2clip-nemo plan: plan.mfu=2.0 must be in (0, 1].\n"


def test_finetune_plan_takes_the_architecture_left_to_the_checkpoint(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "clip_vision_model", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
        "intermediate_size": 4096, "image_size": 224, "patch_size": 14, "projection_dim": 768,
        "hidden_act": "quick_gelu"}))
    r = run_plan(capsys, "--config-name", "finetune_tiny", f"model.init_from={tmp_path}", "model.vision.width=0",
                 "model.vision.num_layers=0", "model.vision.num_heads=0", "model.vision.mlp_dim=0",
                 "model.vision.image_size=0", "model.vision.patch_size=0", "model.vision.activation=checkpoint")
    # ViT-L/14 from the checkpoint; the 128-d projection of finetune_tiny (the head is re-initialised)
    assert r["vision_forward_flops"] == VIT_L14_1280_FWD - 2 * 1024 * (1280 - 128)
    assert r["vision_params"] == P.vision_shape({**VIT_L14, "embed_dim": 128}).num_params()


def test_caption_length_comes_from_the_teacher_contract_when_the_config_leaves_it(tmp_path, capsys):
    """max_length unset in the recipe (the large recipes leave it to the teacher): the contract recorded
    with the teacher dir gives the tokens per caption; with no contract on this machine, the import
    default (256)."""
    from llm2clip_nemo.formats.contract import TeacherContract, write_contract

    smol = {"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152}
    (tmp_path / "meg" / "hf").mkdir(parents=True)
    (tmp_path / "meg" / "teacher.json").write_text("{}")
    (tmp_path / "meg" / "hf" / "config.json").write_text(json.dumps(smol))
    write_contract(tmp_path / "meg" / "hf", TeacherContract(max_length=96), {"source": "test"})
    nonemb = 134_515_008 - 49152 * 576
    r = run_plan(capsys, "--config-name", "pretrain_tiny", f"model.teacher.path={tmp_path / 'meg'}",
                 "model.teacher.max_length=null")
    assert r["teacher_forward_flops_per_caption"] == 2 * 96 * nonemb + 4 * 30 * 96**2 * 576
    r = run_plan(capsys, "--config-name", "pretrain_large")  # its teacher dir exists only on the cluster
    assert r["teacher_forward_flops_per_caption"] == P.llama_forward_flops(
        P.teacher_shape({"preset": "llama-3-8b", "seq_len": 256}))


def test_plan_of_a_recipe_counts_what_its_run_measures(capsys):
    """pretrain_large offline: the plan's FLOPs per sample are the run's MFU count of the same config
    (`runtime.flops.train_flops_per_sample` of model.vision and model.adapter at the teacher's 4096-d)."""
    from llm2clip_nemo.config import load_config
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig
    from llm2clip_nemo.runtime.flops import train_flops_per_sample

    cfg = load_config(TrainCLIPConfig, "pretrain_large", [], validate=False)
    run = train_flops_per_sample(cfg.model.vision, cfg.model.adapter, 4096)
    r = run_plan(capsys, "--config-name", "pretrain_large")
    assert r["train_flops_per_sample"] == r["model_flops_per_sample"] == run == 3 * (VIT_L14_1280_FWD
                                                                                   + ADAPTER_4096_1280_FWD)


def test_peak_comes_from_the_runs_peak_table(capsys):
    """The peak the run's MFU divides by (`runtime.flops.GPU_PEAKS`): FP8 for pretrain_large's FP8 tower
    (`vision.fp8: true`), bf16 without it; a GPU without FP8 tensor cores is refused for an FP8 tower."""
    from llm2clip_nemo.runtime.flops import GPU_PEAKS

    bf16 = ["model.vision.fp8=false"]
    assert run_plan(capsys, "--config-name", "pretrain_large")["peak_tflops"] == GPU_PEAKS["H100"]["fp8"] / 1e12 == 1979.0
    assert run_plan(capsys, "--config-name", "pretrain_large", *bf16)["peak_tflops"] == GPU_PEAKS["H100"]["bf16"] / 1e12
    assert run_plan(capsys, "--config-name", "pretrain_large", *bf16, "plan.gpu=A100")["peak_tflops"] == 312.0
    assert run_plan(capsys, "--config-name", "pretrain_large", "plan.peak_tflops=100")["peak_tflops"] == 100.0
    assert P.main(["--config-name", "pretrain_large", "plan.gpu=B200"]) == 2
    assert capsys.readouterr().err == ("llm2clip-nemo plan: plan.gpu='B200' is not in the peak table: choose one of "
                                       "H200, H100 NVL, H100 PCIe, H100, A100 or set plan.peak_tflops.\n")
    assert P.main(["--config-name", "pretrain_large", "plan.gpu=A100"]) == 2
    assert capsys.readouterr().err == ("llm2clip-nemo plan: plan.gpu='A100' has no fp8 tensor cores "
                                       "(model.vision.fp8=true): plan for one of H200, H100 NVL, H100 PCIe, H100, or "
                                       "set model.vision.fp8=false.\n")


@pytest.mark.parametrize("overrides,message", [
    (["model.teacher.tensor_parallel=4", "trainer.devices=2", "trainer.num_nodes=2"],
     "model.teacher.tensor_parallel=4 does not divide the 2 GPUs per node (trainer.devices=2): a tensor-parallel "
     "group would cross nodes. Set it to one of [1, 2] or launch 4 GPUs per node."),
    (["model.teacher.tensor_parallel=4", "trainer.devices=6"],
     "model.teacher.tensor_parallel=4 does not divide the world size 6: set it to one of [1, 2, 3, 6] or launch a "
     "multiple of 4 processes."),
])
def test_plan_and_run_refuse_a_bad_tp_with_the_same_message(overrides, message, tmp_path, capsys):
    """One TP rule (`runtime.layout.check_tp` through `recipes.train_clip.check_teacher_tp`): the plan of a
    launch and the run of it refuse it with the same line, exit 2 both."""
    from llm2clip_nemo.recipes import train_clip

    argv = ["--config-name", "pretrain_tiny", *overrides]
    assert P.main(argv) == 2
    assert capsys.readouterr().err == f"llm2clip-nemo plan: {message}\n"
    assert train_clip.main([*argv, f"exp_manager.exp_dir={tmp_path}"], mode="pretrain") == 2
    assert capsys.readouterr().err == f"llm2clip-nemo pretrain: config error: {message}\n"
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_teacher_section_without_a_length_plans_the_contract_default():
    """A dict teacher section with no seq_len/max_length plans the teacher contract's max_length (one default)."""
    from llm2clip_nemo.formats.contract import TeacherContract

    t = P.teacher_shape({"preset": "llama-3-8b"})
    assert t.seq_len == TeacherContract().max_length == 256
