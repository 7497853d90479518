"""Our ViT (family=siglip) <-> Hugging Face SiglipVisionModel: embeddings equal transformers', export
reloads in stock transformers with the same embeddings, unsupported configs refused by field."""
import json

import pytest
import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from llm2clip_nemo.formats.vision_checkpoint import vit_from_hf, vit_to_hf
from llm2clip_nemo.runtime import destroy_parallel, init_parallel
from llm2clip_nemo.vision import VisionTransformer
from llm2clip_nemo.vision.config import ViTConfig


@pytest.fixture(scope="module")
def groups():
    g = init_parallel(1)
    yield g
    destroy_parallel()


def _random_siglip(seed: int = 0, image_size: int = 32) -> SiglipVisionModel:
    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                             image_size=image_size, patch_size=8, layer_norm_eps=1e-6)
    hf = SiglipVisionModel(cfg).eval()
    with torch.no_grad():  # HF inits norms to (1, 0) and some biases to 0: randomise so every map is checked
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return hf


def test_hf_siglip_to_ours_same_embeddings(groups):
    hf = _random_siglip()
    cfg, sd = vit_from_hf(hf)
    assert (cfg.family, cfg.width, cfg.num_layers, cfg.num_heads, cfg.mlp_dim, cfg.embed_dim, cfg.activation,
            cfg.layernorm_eps, cfg.seq_len) == ("siglip", 64, 2, 4, 112, 64, "gelu_tanh", 1e-6, 16)
    ours = VisionTransformer(cfg, groups).eval()
    ours.load_canonical_state_dict(sd)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters()) == cfg.num_params()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=pixels).pooler_output
        assert (ours(pixels) - ref).abs().max() <= 1e-5
        assert (ours.pooled(pixels) - ref).abs().max() <= 1e-5


def test_siglip_export_reloads_in_stock_transformers(groups, tmp_path):
    hf = _random_siglip(1)
    cfg, sd = vit_from_hf(hf)
    ours = VisionTransformer(cfg, groups).eval()
    ours.load_canonical_state_dict(sd)
    vit_to_hf(ours).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "siglip_vision_model"
    back = SiglipVisionModel.from_pretrained(tmp_path).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(pixel_values=pixels).pooler_output, ours(pixels), atol=1e-5, rtol=0)
    _, again = vit_from_hf(tmp_path)  # and the directory maps back bit-exactly
    original = ours.canonical_state_dict()
    assert again.keys() == original.keys()
    for k in original:
        assert torch.equal(again[k], original[k]), k


def test_unsupported_siglip_configs_are_refused_by_field(tmp_path):
    from llm2clip_nemo.formats.vision_checkpoint import vit_config_from_hf

    base = _random_siglip().config.to_dict()
    with pytest.raises(ValueError, match=r"model_type='siglip2_vision_model' is SigLIP2 NaFlex \(variable resolution"):
        vit_config_from_hf({**base, "model_type": "siglip2_vision_model", "num_patches": 256})
    with pytest.raises(ValueError, match=r"^unsupported checkpoint: vision_use_head=false"):
        vit_config_from_hf({**base, "vision_use_head": False})
    with pytest.raises(ValueError, match=r"hidden_act='relu'"):
        vit_config_from_hf({**base, "hidden_act": "relu"})
    with pytest.raises(ValueError, match=r"vision.family=siglip has no projection, so vision.embed_dim=32 must "
                                         r"equal vision.width=64: set vision.embed_dim=64."):
        ViTConfig(family="siglip", width=64, num_heads=4, embed_dim=32).validate()


def test_patch_grid_is_floored_like_so400m(groups):
    """36 px with 8 px patches: a floored 4 x 4 grid, as So400m/14 at 384 px (27 x 27) in transformers."""
    hf = _random_siglip(2, image_size=36)
    cfg, sd = vit_from_hf(hf)
    assert (cfg.image_size, cfg.grid_size, cfg.seq_len) == (36, 4, 16)
    ours = VisionTransformer(cfg, groups).eval()
    ours.load_canonical_state_dict(sd)
    pixels = torch.randn(2, 3, 36, 36)
    with torch.no_grad():
        assert (ours(pixels) - hf(pixel_values=pixels).pooler_output).abs().max() <= 1e-5
