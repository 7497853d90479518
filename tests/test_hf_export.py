"""Hugging Face export/import of whole LLM2CLIP models, and loading every checkpoint layout.

One real (2-step, online-teacher) training run on word-caption shards with a tiny random Llama
teacher gives the run directory, model.nemo and Lightning checkpoints the tests read.
`tiny_run` is shared with test_evaluate.py (built once per session).
"""
from __future__ import annotations

import io
import json
import random

import pytest
import torch
from llm_fixtures import write_tiny_llama
from PIL import Image

from llm2clip_nemo.config import ConfigError, load_config
from llm2clip_nemo.data.shards import ShardSample, write_shards

TINY = ["model.vision.image_size=16", "model.vision.patch_size=8", "model.vision.width=32",
        "model.vision.num_layers=2", "model.vision.num_heads=2", "model.vision.mlp_dim=64",
        "model.vision.embed_dim=32", "model.adapter.num_blocks=2", "model.train_ds.transform.image_size=16"]
CLASSES = ("w90", "w91", "w92")
_CACHE: dict = {}


def image_bytes(i: int, size=(20, 16)) -> bytes:
    rng = random.Random(i)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    img.paste(tuple(rng.randrange(256) for _ in range(3)), (rng.randrange(8), rng.randrange(8), 14, 12))
    b = io.BytesIO()
    img.save(b, "PNG")
    return b.getvalue()


def word_samples(n: int, seed: int):
    """Word captions the tiny teacher's word-level tokenizer tells apart; a class label per sample."""
    rng = random.Random(seed)

    def words(k):
        return " ".join(f"w{rng.randrange(80)}" for _ in range(k))

    return [ShardSample(f"{seed}-{i:04d}", image_bytes(i + 100 * seed), "png", words(3),
                        {"long": words(9), "short_list": [words(2), words(4)], "group": CLASSES[i % 3]})
            for i in range(n)]


def tiny_run(root):
    """{teacher, train, test, run, nemo, ckpt, export}: a trained tiny model in every layout."""
    key = str(root)
    if key in _CACHE:
        return _CACHE[key]
    from llm2clip_nemo.convert.hf_export import export_hf
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig, run

    teacher = write_tiny_llama(root / "teacher")
    write_shards(word_samples(16, 1), str(root / "train"), samples_per_shard=8)
    write_shards(word_samples(12, 2), str(root / "test"), samples_per_shard=6)
    over = [f"model.teacher.path={teacher}", "model.teacher_mode=online",
            f"model.train_ds.urls={root / 'train'}", "model.train_ds.batch_size=8", "model.train_ds.shuffle_buffer=8",
            "model.num_workers=0", "trainer.max_steps=2", f"exp_manager.exp_dir={root / 'runs'}",
            "exp_manager.checkpoint_every_n_steps=1", "trainer.enable_progress_bar=false", *TINY]
    res = run(load_config(TrainCLIPConfig, None, over))
    run_dir = root / "runs" / "run"
    if not run_dir.is_dir():
        run_dir = next((root / "runs").iterdir())
    out = {"teacher": teacher, "train": root / "train", "test": root / "test", "run": run_dir,
           "nemo": run_dir / "model.nemo", "ckpt": sorted((run_dir / "checkpoints").glob("*last.ckpt"))[0],
           "steps": res["global_step"]}
    out["export"] = export_hf(out["ckpt"], root / "export")
    _CACHE[key] = out
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_run(tmp_path_factory.getbasetemp() / "llm2clip_tiny_run")


def _weights(model) -> dict[str, torch.Tensor]:
    sd = {f"vision.{k}": v for k, v in model.net.vision.canonical_state_dict().items()}
    sd.update({k: v for k, v in model.net.state_dict().items() if not k.startswith("vision.") and torch.is_tensor(v)})
    return sd


# ---- round trips ----------------------------------------------------------------------------------

def test_every_layout_loads_the_same_weights_bit_exact(tiny):
    from llm2clip_nemo.models.loading import load_llm2clip

    ref = load_llm2clip(tiny["ckpt"])
    assert ref.load_info.layout == "ckpt" and ref.load_info.global_step == tiny["steps"] == 2
    w_ref = _weights(ref)
    assert "loss.logit_scale" in w_ref and any(k.startswith("adapter.blocks.") for k in w_ref)
    for path, layout in ((tiny["run"], "nemo"), (tiny["nemo"], "nemo"), (tiny["export"], "hf_export")):
        m = load_llm2clip(path)
        assert m.load_info.layout == layout
        w = _weights(m)
        assert w.keys() == w_ref.keys()
        for k in w_ref:
            assert torch.equal(w[k], w_ref[k]), (path, k)


def test_export_layout_and_model_card(tiny):
    out = tiny["export"]
    meta = json.loads((out / "llm2clip.json").read_text())
    assert meta["format"] == "llm2clip_nemo.hf_export/1" and meta["training"]["global_step"] == 2
    acfg = json.loads((out / "adapter" / "config.json").read_text())
    assert acfg["input_dim"] == acfg["teacher_hidden_size"] == 64
    # the contract the model was trained with (the tiny teacher records none: the config's defaults)
    from llm2clip_nemo.formats.contract import TeacherContract, read_contract

    assert read_contract(out / "llm") == TeacherContract()
    from llm2clip_nemo.text.config import TeacherConfig, expected_fingerprint

    # the exported LLM is the same teacher: same fingerprint as the training teacher
    assert acfg["teacher_fingerprint"] == expected_fingerprint(TeacherConfig(path=str(tiny["teacher"])))
    card = (out / "README.md").read_text()
    for needle in ("LLM2CLIP.from_pretrained", "CLIPVisionModelWithProjection.from_pretrained", "steps: 2",
                   str(tiny["train"]), "loss: clip"):
        assert needle in card
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".export.tmp")]


def test_stock_transformers_vision_matches_our_vit(tiny):
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from llm2clip_nemo.hf_model import preprocess_images
    from llm2clip_nemo.models.loading import load_llm2clip

    ours = load_llm2clip(tiny["nemo"])
    hf = CLIPVisionModelWithProjection.from_pretrained(tiny["export"] / "vision").eval()  # no trust_remote_code
    torch.manual_seed(0)
    pixels = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        diff = (hf(pixel_values=pixels).image_embeds - ours.net.vision(pixels)).abs().max().item()
    assert diff <= 1e-5
    # the exported preprocessor gives our eval transform's pixels (square input: no crop ambiguity)
    img = Image.open(io.BytesIO(image_bytes(7, size=(16, 16))))
    proc = CLIPImageProcessor.from_pretrained(tiny["export"] / "vision")
    theirs = proc(images=[img], return_tensors="pt")["pixel_values"]
    t = ours.typed.train_ds.transform
    mine = preprocess_images([img], 16, t.mean, t.std)
    assert theirs.shape == mine.shape and (theirs - mine).abs().max().item() < 1e-5


def test_exported_model_features_equal_pre_export(tiny):
    from llm2clip_nemo import LLM2CLIP
    from llm2clip_nemo.models.loading import load_llm2clip

    ref = load_llm2clip(tiny["ckpt"])
    hf = LLM2CLIP.from_pretrained(tiny["export"])
    images = [Image.open(io.BytesIO(image_bytes(i))) for i in range(4)]
    t = ref.typed.train_ds.transform
    from llm2clip_nemo.hf_model import preprocess_images

    want_img = ref.encode_images(preprocess_images(images, 16, t.mean, t.std))
    assert (hf.get_image_features(images) - want_img).abs().max().item() <= 1e-5
    caps = ["w1 w2 w3", "w5", "w7 w8 w9 w10 w11 w12", "w40 w41"]
    want_txt = ref.encode_teacher_embeddings(ref.teacher.encode_texts(caps))
    got_txt = hf.get_text_features(caps)
    assert (got_txt - want_txt).abs().max().item() <= 1e-4  # HF encoder vs Megatron teacher
    logits = hf.similarity(want_img, want_txt)
    assert torch.allclose(logits, ref.net.loss.scale() * want_img @ want_txt.T, atol=1e-5)
    assert float(hf.logit_scale) == float(ref.net.loss.scale())


def test_finetune_from_our_export_is_bit_exact(tiny):
    from llm2clip_nemo.models.llm2clip import LLM2CLIPModel
    from llm2clip_nemo.models.loading import load_llm2clip
    from llm2clip_nemo.models.nemo_base import to_dictconfig
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig

    cfg = load_config(TrainCLIPConfig, None, [f"model.teacher.path={tiny['teacher']}", "model.mode=finetune",
                                              f"model.init_from={tiny['export'] / 'vision'}", "model.seed=123", *TINY])
    fresh = LLM2CLIPModel(to_dictconfig(cfg.model))
    exported = load_llm2clip(tiny["export"])
    a, b = fresh.net.vision.canonical_state_dict(), exported.net.vision.canonical_state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_transformer_engine_checkpoint_keys_load_into_local_layers(tiny):
    """A GPU (TE-layer) checkpoint evaluates on CPU: vision keys go through the canonical layout."""
    from llm2clip_nemo.models.loading import build_model, load_llm2clip, load_net_weights, prepare_config, read_ckpt
    from llm2clip_nemo.vision.specs import from_canonical_keys

    trained = load_llm2clip(tiny["ckpt"])
    te_vision = from_canonical_keys(trained.net.vision.canonical_state_dict(), "transformer_engine")
    assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in te_vision
    sd = {f"net.vision.{k}": v for k, v in te_vision.items()}
    sd["net.vision.decoder.layers.0.self_attention.linear_qkv._extra_state"] = None  # TE's FP8 metadata slot
    sd.update({f"net.{k}": v for k, v in trained.net.state_dict().items() if not k.startswith("vision.")})
    fresh = build_model(prepare_config(read_ckpt(tiny["ckpt"])[0]))
    assert fresh.net.vision.impl == "local"
    assert not torch.equal(fresh.net.vision.projection.weight, trained.net.vision.projection.weight)
    load_net_weights(fresh, sd)
    a, b = _weights(fresh), _weights(trained)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_export_from_a_megatron_teacher_dir_writes_the_same_llm(tiny, tmp_path):
    """teacher.path at a `convert import-llm` dir (TP shards): llm/ is the HF model it came from."""
    from safetensors.torch import load_file

    from llm2clip_nemo.convert.hf_export import export_hf
    from llm2clip_nemo.convert.llm import import_llm

    megatron = import_llm(tiny["teacher"], tmp_path / "mg", tp=2)
    out = export_hf(tiny["ckpt"], tmp_path / "export", teacher_path=megatron)
    acfg = json.loads((out / "adapter" / "config.json").read_text())
    ref = json.loads((tiny["export"] / "adapter" / "config.json").read_text())
    assert acfg["teacher_fingerprint"] == ref["teacher_fingerprint"]
    a, b = load_file(out / "llm" / "model.safetensors"), load_file(tiny["teacher"] / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "llm" / "tokenizer.json").is_file()


# ---- bad input ------------------------------------------------------------------------------------

def test_unknown_layout_names_what_was_found(tmp_path):
    from llm2clip_nemo.convert.cli import main as convert_main
    from llm2clip_nemo.models.loading import UnknownLayoutError, load_llm2clip

    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UnknownLayoutError, match=r"unknown checkpoint layout: .* holding \['notes.txt'\]. "
                                                 r"Expected a .nemo archive"):
        load_llm2clip(tmp_path)
    bogus = tmp_path / "x.ckpt"
    torch.save({"weights": torch.zeros(2)}, bogus)
    with pytest.raises(UnknownLayoutError, match=r"x.ckpt is a .ckpt without state_dict.*not a stage-2"):
        load_llm2clip(bogus)
    with pytest.raises(UnknownLayoutError, match=r"suffix '.txt'"):
        load_llm2clip(tmp_path / "notes.txt")
    assert convert_main(["export-hf", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_teacher_dimension_mismatch_is_refused(tiny, tmp_path):
    from llm2clip_nemo import LLM2CLIP
    from llm2clip_nemo.convert.hf_export import export_hf
    from llm2clip_nemo.models.loading import load_llm2clip

    wide = write_tiny_llama(tmp_path / "wide", hidden=48, heads=4, kv_heads=2)
    with pytest.raises(ConfigError, match=r"embedding dimension mismatch: the model's adapter takes 64-dim teacher "
                                          r"embeddings .* has hidden size 48"):
        load_llm2clip(tiny["nemo"], teacher_path=wide)
    with pytest.raises(ConfigError, match="embedding dimension mismatch"):
        export_hf(tiny["ckpt"], tmp_path / "out", teacher_path=wide)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    # a tampered export (another LLM dropped into llm/) is caught by the inference class too
    import shutil

    bad = tmp_path / "bad_export"
    shutil.copytree(tiny["export"], bad)
    shutil.rmtree(bad / "llm")
    shutil.copytree(wide, bad / "llm")
    shutil.copy(tiny["export"] / "llm" / "teacher_contract.json", bad / "llm")  # only the width differs
    with pytest.raises(ValueError, match=r"adapter takes 64-dim LLM embeddings but .*llm has hidden size 48"):
        LLM2CLIP.from_pretrained(bad)


def test_other_teacher_with_same_width_is_refused_by_fingerprint(tiny, tmp_path):
    from llm2clip_nemo.models.loading import load_llm2clip

    other = write_tiny_llama(tmp_path / "other", seed=5)
    with pytest.raises(ConfigError, match=r"teacher mismatch: the checkpoint was trained against teacher fingerprint"):
        load_llm2clip(tiny["ckpt"], teacher_path=other)


def test_siglip_finetune_trains_with_sigmoid_loss_and_exports_to_stock_siglip(tiny, tmp_path):
    """A tiny random transformers SiglipVisionModel -> fine-tune init (the ViT equals it bit-exactly)
    -> 2 steps with the sigmoid loss -> export: stock SiglipVisionModel gives our ViT's embeddings."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from llm2clip_nemo.convert.hf_export import export_hf
    from llm2clip_nemo.formats.siglip_vision import siglip_state_dict_from_hf
    from llm2clip_nemo.models.llm2clip import LLM2CLIPModel
    from llm2clip_nemo.models.loading import load_llm2clip
    from llm2clip_nemo.models.nemo_base import to_dictconfig
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig, prepare_run, run

    torch.manual_seed(5)
    src = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=16, patch_size=8)).eval()
    src.save_pretrained(tmp_path / "siglip")
    over = [f"model.teacher.path={tiny['teacher']}", "model.teacher_mode=online", "model.mode=finetune",
            f"model.init_from={tmp_path / 'siglip'}", "model.vision.family=checkpoint",
            "model.vision.activation=checkpoint", "model.vision.layernorm_eps=0", "model.loss.kind=siglip",
            f"model.train_ds.urls={tiny['train']}", "model.train_ds.batch_size=8", "model.train_ds.shuffle_buffer=8",
            "model.num_workers=0", "trainer.max_steps=2", f"exp_manager.exp_dir={tmp_path / 'runs'}",
            "exp_manager.checkpoint_every_n_steps=2", "trainer.enable_progress_bar=false", *TINY,
            "model.train_ds.transform.mean=[0.5,0.5,0.5]", "model.train_ds.transform.std=[0.5,0.5,0.5]"]  # SigLIP's
    cfg = prepare_run(load_config(TrainCLIPConfig, None, over))  # the checkpoint's architecture, adopted
    assert (cfg.model.vision.family, cfg.model.vision.activation, cfg.model.vision.layernorm_eps) == (
        "siglip", "gelu_tanh", 1e-6)
    fresh = LLM2CLIPModel(to_dictconfig(cfg.model)).net.vision.canonical_state_dict()
    want = siglip_state_dict_from_hf(src.state_dict(), cfg.model.vision)
    assert fresh.keys() == want.keys() and all(torch.equal(fresh[k], want[k]) for k in want)
    assert run(cfg)["global_step"] == 2
    ckpt = sorted((tmp_path / "runs").rglob("*last.ckpt"))[0]
    ours = load_llm2clip(ckpt)
    assert type(ours.net.loss).__name__ == "SigLIPLoss"
    trained = ours.net.vision.canonical_state_dict()
    assert any(not torch.equal(trained[k], want[k]) for k in want)  # the steps changed the tower
    export = export_hf(ckpt, tmp_path / "export")
    hf = SiglipVisionModel.from_pretrained(export / "vision").eval()  # stock class, no trust_remote_code
    pixels = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert (hf(pixel_values=pixels).pooler_output - ours.net.vision(pixels)).abs().max().item() <= 1e-5
    assert "SiglipVisionModel.from_pretrained" in (export / "README.md").read_text()
    # its image processor: the stock SiglipImageProcessor (PIL backend in transformers >= 5 without
    # torchvision), giving exactly the pixels our eval transform feeds the tower
    from transformers import AutoImageProcessor

    from llm2clip_nemo.hf_model import preprocess_images

    pp = json.loads((export / "vision" / "preprocessor_config.json").read_text())
    assert (pp["image_processor_type"], pp["size"], pp["image_mean"], pp["image_std"]) == (
        "SiglipImageProcessor", {"height": 16, "width": 16}, [0.5] * 3, [0.5] * 3)
    assert type(AutoImageProcessor.from_pretrained(export / "vision")).__name__.removesuffix("Pil") == (
        "SiglipImageProcessor")
    proc = AutoImageProcessor.from_pretrained(export / "vision", backend="pil")
    assert type(proc).__name__ == "SiglipImageProcessorPil"
    img = Image.open(io.BytesIO(image_bytes(7, size=(40, 40))))  # square, resized 40 -> 16
    theirs = proc(images=[img], return_tensors="pt")["pixel_values"]
    mine = preprocess_images([img], 16, [0.5] * 3, [0.5] * 3)
    assert theirs.shape == mine.shape == (1, 3, 16, 16)
    torch.testing.assert_close(theirs, mine, atol=1e-6, rtol=0)
