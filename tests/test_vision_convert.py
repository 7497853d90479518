"""Our ViT <-> Hugging Face CLIPVisionModelWithProjection: numbers, round trips, stock loading,
refused layouts."""
import json

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from llm2clip_nemo.formats.clip_vision import vit_state_dict_from_hf
from llm2clip_nemo.formats.vision_checkpoint import vit_config_from_hf, vit_from_hf, vit_to_hf
from llm2clip_nemo.runtime import destroy_parallel, init_parallel
from llm2clip_nemo.vision import VisionTransformer


@pytest.fixture(scope="module")
def groups():
    g = init_parallel(1)
    yield g
    destroy_parallel()


def _random_hf(act: str, seed: int = 0) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=112, projection_dim=40, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8, hidden_act=act)
    hf = CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():  # HF inits norms to (1, 0) and biases to 0: randomise so every map is checked
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return hf


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_hf_to_ours_same_embeddings(groups, act):
    hf = _random_hf(act)
    cfg, sd = vit_from_hf(hf)
    assert (cfg.width, cfg.num_layers, cfg.num_heads, cfg.mlp_dim, cfg.embed_dim, cfg.activation) == (
        64, 2, 4, 112, 40, act)
    ours = VisionTransformer(cfg, groups).eval()
    ours.load_canonical_state_dict(sd)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=pixels)
        assert (ours(pixels) - ref.image_embeds).abs().max() <= 1e-5
        hf_pooled = hf.vision_model(pixel_values=pixels).pooler_output
        assert (ours.pooled(pixels) - hf_pooled).abs().max() <= 1e-5


def test_ours_to_hf_to_ours_is_bit_exact(groups, tmp_path):
    torch.manual_seed(1)
    cfg, _ = vit_from_hf(_random_hf("quick_gelu"))
    ours = VisionTransformer(cfg, groups).eval()
    hf = vit_to_hf(ours)
    _, back = vit_from_hf(hf)
    original = ours.canonical_state_dict()
    assert back.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(back[key], value), key
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (hf(pixel_values=pixels).image_embeds - ours(pixels)).abs().max() <= 1e-5

    # a stock directory: safetensors, no remote code, loadable by plain transformers
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == "clip_vision_model"
    stock = CLIPVisionModelWithProjection.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(stock(pixel_values=pixels).image_embeds, hf(pixel_values=pixels).image_embeds)
    cfg2, from_dir = vit_from_hf(tmp_path)
    assert cfg2 == cfg
    for key, value in original.items():
        assert torch.equal(from_dir[key], value), key


def test_qkv_fusion_is_per_head(groups):
    # megatron's fused rows are [head, (q, k, v), head_dim]: head 1's q rows follow head 0's v rows
    hf = _random_hf("gelu")
    cfg, sd = vit_from_hf(hf)
    fused = sd["decoder.layers.0.self_attention.linear_qkv.weight"]
    attn = hf.vision_model.encoder.layers[0].self_attn
    hd = cfg.head_dim
    assert torch.equal(fused[:hd], attn.q_proj.weight[:hd])
    assert torch.equal(fused[hd:2 * hd], attn.k_proj.weight[:hd])
    assert torch.equal(fused[2 * hd:3 * hd], attn.v_proj.weight[:hd])
    assert torch.equal(fused[3 * hd:4 * hd], attn.q_proj.weight[hd:2 * hd])


def test_unknown_layouts_are_refused():
    hf = _random_hf("gelu")
    cfg, _ = vit_from_hf(hf)
    sd = hf.state_dict()
    # a fused-qkv (open_clip / timm style) attention cannot be mapped
    fused = dict(sd)
    for n in "qkv":
        fused.pop(f"vision_model.encoder.layers.0.self_attn.{n}_proj.weight")
    fused["vision_model.encoder.layers.0.self_attn.in_proj_weight"] = torch.zeros(192, 64)
    with pytest.raises(ValueError, match=r"unknown checkpoint layout.*missing.*q_proj.*unmapped.*in_proj_weight"):
        vit_state_dict_from_hf(fused, cfg)
    with pytest.raises(ValueError, match=r"unknown checkpoint layout: no 'vision_model\.\*' keys"):
        vit_state_dict_from_hf({"visual.conv1.weight": torch.zeros(1)}, cfg)
    no_proj = {k: v for k, v in sd.items() if k != "visual_projection.weight"}
    with pytest.raises(ValueError, match=r"missing \['visual_projection.weight'\]"):
        vit_state_dict_from_hf(no_proj, cfg)
    assert "projection.weight" not in vit_state_dict_from_hf(no_proj, cfg, require_projection=False)
    other = {"model_type": "vit", "hidden_size": 64}  # (SigLIP maps since issue 18: tests/test_siglip_convert.py)
    with pytest.raises(ValueError, match=r"unknown checkpoint layout: model_type='vit'"):
        vit_config_from_hf(other)


# ---------------------------------------------------------------- fine-tune init: architecture check
ARCH_FROM_CKPT = ["model.vision.activation=checkpoint", "model.vision.layernorm_eps=0", "model.vision.width=0",
                  "model.vision.num_layers=0", "model.vision.num_heads=0", "model.vision.mlp_dim=0",
                  "model.vision.image_size=0", "model.vision.patch_size=0", "model.vision.num_channels=0"]


def _saved_quick_gelu_ckpt(tmp_path, eps: float = 1e-6):
    hf = _random_hf("quick_gelu")
    hf.config.layer_norm_eps = eps
    for layer in hf.vision_model.encoder.layers:  # the eps lives in the modules too
        layer.layer_norm1.eps = layer.layer_norm2.eps = eps
    hf.vision_model.pre_layrnorm.eps = hf.vision_model.post_layernorm.eps = eps
    hf.save_pretrained(tmp_path / "ckpt")
    return hf, str(tmp_path / "ckpt")


def _finetune_cfg(path, *overrides):
    """The finetune_tiny config as a run starts with it (`prepare_run`: the checkpoint's architecture adopted)."""
    from llm2clip_nemo.config import load_config
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig, prepare_run

    return prepare_run(load_config(TrainCLIPConfig, "finetune_tiny", [f"model.init_from={path}",
                                                                       "model.vision.embed_dim=40", *overrides]))


def test_finetune_init_adopts_the_checkpoints_architecture_and_matches_transformers(groups, tmp_path):
    """Every numerics field left to the checkpoint (quick_gelu, eps 1e-6, the widths...) is adopted where
    the run starts, and the fine-tune init then gives transformers' embeddings."""
    from llm2clip_nemo.models.llm2clip import LLM2CLIPNetwork, init_vision_from_hf

    hf, path = _saved_quick_gelu_ckpt(tmp_path)
    v = _finetune_cfg(path, *ARCH_FROM_CKPT).model.vision
    assert (v.image_size, v.patch_size, v.num_channels, v.width, v.num_layers, v.num_heads, v.mlp_dim,
            v.activation, v.layernorm_eps) == (32, 8, 3, 64, 2, 4, 112, "quick_gelu", 1e-6)
    net = LLM2CLIPNetwork(_finetune_cfg(path, *ARCH_FROM_CKPT).model, groups, teacher_dim=576).eval()
    init_vision_from_hf(net, path)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (net.image_features(pixels) - hf(pixel_values=pixels).image_embeds).abs().max() <= 1e-5


@pytest.mark.parametrize("override,message", [
    ("model.vision.activation=gelu", "has hidden_act='quick_gelu' but model.vision.activation='gelu': set "
                                     "model.vision.activation=quick_gelu (or checkpoint to take the checkpoint's value)."),
    ("model.vision.layernorm_eps=1e-5", "has layer_norm_eps=1e-06 but model.vision.layernorm_eps=1e-05: set "
                                        "model.vision.layernorm_eps=1e-06 (or 0 to take the checkpoint's value)."),
    ("model.vision.mlp_dim=128", "has intermediate_size=112 but model.vision.mlp_dim=128: set "
                                 "model.vision.mlp_dim=112 (or 0 to take the checkpoint's value)."),
])
def test_finetune_init_refuses_a_mismatched_field(tmp_path, capsys, override, message):
    from llm2clip_nemo.config import ConfigError
    from llm2clip_nemo.recipes.train_clip import main

    _, path = _saved_quick_gelu_ckpt(tmp_path)
    capsys.readouterr()  # save_pretrained's progress line
    rest = [o for o in ARCH_FROM_CKPT if o.split("=")[0] != override.split("=")[0]]
    with pytest.raises(ConfigError) as e:
        _finetune_cfg(path, *rest, override)
    assert str(e.value) == f"model.init_from={path} {message}"
    argv = ["--config-name", "finetune_tiny", f"model.init_from={path}", "model.vision.embed_dim=40", *rest, override]
    assert main(argv, mode="finetune") == 2
    assert capsys.readouterr().err == f"llm2clip-nemo finetune: config error: model.init_from={path} {message}\n"


def test_from_checkpoint_values_need_a_finetune_checkpoint(tmp_path):
    from llm2clip_nemo.config import ConfigError, load_config
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig

    with pytest.raises(ConfigError, match=r"^model.vision.activation='checkpoint' takes its value from a fine-tune "
                                          r"checkpoint, but model.mode=pretrain: give model.vision.activation a value.$"):
        load_config(TrainCLIPConfig, "pretrain_tiny", ["model.vision.activation=checkpoint"])
    with pytest.raises(ConfigError, match=r"^model.vision.width=0 takes the checkpoint's value but model.init_from="):
        _finetune_cfg(tmp_path / "absent", "model.vision.width=0")
