"""A trained LLM2CLIP model -> Hugging Face directories (`llm2clip-nemo convert export-hf`).

    out/vision/      CLIPVisionModelWithProjection (SiglipVisionModel for vision.family=siglip;
                     safetensors) + preprocessor_config.json (CLIPImageProcessor; SiglipImageProcessor
                     for siglip: our eval transform's size, mean and std): stock `transformers` loads
                     both (`AutoImageProcessor`), no trust_remote_code
    out/adapter/     model.safetensors (`adapter.*` weights, `loss.logit_scale`[, `loss.logit_bias`])
                     + config.json (AdapterConfig fields, logit scale, teacher fingerprint and switches)
    out/llm/         the teacher as a standard HF causal-LM directory with its tokenizer and its
                     teacher contract (teacher_contract.json: attention, pooling, max_length, text
                     preparation), the one source the model card and `LLM2CLIP` read
    out/llm2clip.json  format version, what is where, the training config
    out/README.md    model card

`llm2clip_nemo.LLM2CLIP.from_pretrained(out)` composes the three; `models.loading.load_llm2clip(out)`
rebuilds the training-side `LLM2CLIPModel` (e.g. to fine-tune from it). Written to a temp dir and
renamed, so a crash never leaves a half export under the final name.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from ..formats.contract import TeacherContract
from ..models.loading import EXPORT_FORMAT, load_llm2clip

VISION, ADAPTER, LLM = "vision", "adapter", "llm"
_LLM_SKIP_SUFFIXES = (".gguf", ".lock")


def image_processor_config(family: str, image_size: int, mean, std) -> dict:
    """preprocessor_config.json of the stock `transformers` image processor of a `family` tower
    ('clip' or 'siglip', `ViTConfig.family`), set to our eval transform (`hf_model.preprocess_images`):
    bicubic (resample 3) to `image_size` px square, scale to [0, 1], normalise by `mean`/`std` (3 floats).
    clip: CLIPImageProcessor, resize of the short side then centre crop (our transform does both in one
    step). siglip: SiglipImageProcessor, which resizes the whole image to image_size x image_size with no
    crop (as SigLIP's own preprocessing): the same pixels for a square image; a non-square one is squashed
    there and centre-cropped by our transform."""
    common = {"do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "image_mean": list(mean), "image_std": list(std), "do_convert_rgb": True}
    if family == "siglip":
        return {"image_processor_type": "SiglipImageProcessor", **common,
                "size": {"height": image_size, "width": image_size}}
    return {"image_processor_type": "CLIPImageProcessor", **common, "size": {"shortest_edge": image_size},
            "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size}}


def _export_llm(teacher_path: Path, out: Path) -> None:
    from .llm import export_llm

    if (teacher_path / "teacher.json").is_file():
        export_llm(teacher_path, out)
        return
    from ..formats.hf_io import find_gguf, load_hf_causal_lm
    from ..formats.hf_layouts import is_adapter_dir

    directory, gguf = find_gguf(teacher_path)
    if not gguf and is_adapter_dir(directory):  # a self-contained llm/: the LoRA merged into its base
        from .llm import export_merged_adapter

        export_merged_adapter(directory, out)
        return
    if gguf:  # dequantised once, written as a plain safetensors checkpoint
        model, tok = load_hf_causal_lm(teacher_path)
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        return
    out.mkdir()
    for f in sorted(directory.iterdir()):
        if f.is_file() and not f.name.startswith(".") and not f.name.endswith(_LLM_SKIP_SUFFIXES):
            shutil.copy2(f, out / f.name)


def _hidden_size(llm_dir: Path) -> int:
    cfg = json.loads((llm_dir / "config.json").read_text())
    return int(cfg.get("hidden_size") or cfg.get("text_config", {}).get("hidden_size"))


def export_hf(model_path: str | os.PathLike, out_dir: str | os.PathLike, *, teacher_path: str | os.PathLike | None = None,
              tensor_parallel: int = 1, weights: str | None = None) -> Path:
    """Export the model at `model_path` (any layout `load_llm2clip` accepts) to `out_dir`, which
    must not exist. Returns `out_dir`. `teacher_path` replaces the recorded teacher location.
    `weights`: "ema", "raw" or None = the EMA when the checkpoint has one (`load_llm2clip`); the
    choice is recorded in llm2clip.json (training.weights); "ema" without an EMA raises ConfigError.
    Raises ConfigError if the recorded teacher is not found (naming it and `--teacher`), ValueError
    if the adapter's input size is not the teacher LLM's hidden size, or the teacher's fingerprint
    is not the one the checkpoint recorded."""
    from ..formats.contract import write_contract
    from ..formats.vision_checkpoint import vit_to_hf
    from ..text.config import expected_fingerprint

    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new --out or remove it.")
    model = load_llm2clip(model_path, tensor_parallel=tensor_parallel, teacher_path=teacher_path, weights=weights)
    info, tc = model.load_info, model.typed
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        # 1. the teacher LLM first, with the contract it was trained with: its hidden size must fit the adapter
        contract = tc.teacher.contract()
        _export_llm(tc.teacher.resolved_path(), tmp / LLM)
        write_contract(tmp / LLM, contract, {"exported_from": str(tc.teacher.path)})
        hidden = _hidden_size(tmp / LLM)
        if hidden != model.net.adapter.input_dim:
            raise ValueError(f"embedding dimension mismatch: the adapter takes {model.net.adapter.input_dim}-dim teacher "
                             f"embeddings but the teacher LLM {tc.teacher.path} has hidden size {hidden}.")
        fingerprint = expected_fingerprint(dataclasses.replace(tc.teacher, path=str(tmp / LLM)))
        if info.teacher_fingerprint not in (None, fingerprint):
            raise ValueError(f"teacher mismatch: the checkpoint was trained against teacher fingerprint "
                             f"{info.teacher_fingerprint}, but {tc.teacher.path} gives {fingerprint}: export with "
                             "the original teacher.")
        # 2. vision tower: a stock CLIPVisionModelWithProjection / SiglipVisionModel + the matching image processor
        vit_to_hf(model.net.vision).save_pretrained(tmp / VISION, safe_serialization=True)
        t = tc.train_ds.transform
        (tmp / VISION / "preprocessor_config.json").write_text(
            json.dumps(image_processor_config(tc.vision.family, tc.vision.image_size, t.mean, t.std), indent=2) + "\n")
        # 3. adapter + the learned temperature (bit-exact tensors; the config holds readable values)
        (tmp / ADAPTER).mkdir()
        tensors = {f"adapter.{k}": v.detach().float().contiguous().clone()
                   for k, v in model.net.adapter.state_dict().items()}
        tensors.update({f"loss.{k}": v.detach().float().contiguous().clone()
                        for k, v in model.net.loss.state_dict().items()})
        save_file(tensors, str(tmp / ADAPTER / "model.safetensors"), metadata={"format": "pt"})
        loss = model.net.loss
        adapter_cfg = {
            **dataclasses.asdict(tc.adapter),
            "input_dim": model.net.adapter.input_dim,
            "joint_dim": model.net.adapter.joint_dim,
            "loss": tc.loss.kind,
            "logit_scale": loss.scale().item(),
            "logit_bias": loss.logit_bias.item() if hasattr(loss, "logit_bias") else None,
            "teacher_fingerprint": fingerprint,
            "teacher_hidden_size": hidden,
        }
        (tmp / ADAPTER / "config.json").write_text(json.dumps(adapter_cfg, indent=2) + "\n")
        # 4. the index and the model card
        from omegaconf import OmegaConf

        from ..models.nemo_base import to_dictconfig

        model_config = OmegaConf.to_container(to_dictconfig(tc), resolve=True)
        model_config["teacher"]["path"] = LLM  # relative: the export is self-contained
        training = {"global_step": info.global_step, "source": info.path, "layout": info.layout,
                    "weights": info.extra.get("weights", "raw"),
                    "train_urls": tc.train_ds.urls, "teacher_source": str(tc.teacher.path)}
        meta = {"format": EXPORT_FORMAT, "vision": VISION, "adapter": ADAPTER, "llm": LLM,
                "embed_dim": tc.vision.embed_dim, "image_size": tc.vision.image_size,
                "model_config": model_config, "training": training}
        (tmp / "llm2clip.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(model_card(meta, adapter_cfg, contract, out.name))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def model_card(meta: dict, adapter_cfg: dict, contract: TeacherContract, name: str) -> str:
    """README.md: what the model is, how it was trained, how to load it. Everything it says about
    how captions are embedded comes from the teacher contract (one source)."""
    mc, tr = meta["model_config"], meta["training"]
    v, a, opt = mc["vision"], mc["adapter"], mc["optim"]
    steps = tr["global_step"] if tr["global_step"] is not None else "unknown"
    scale = adapter_cfg["logit_scale"]
    siglip = v.get("family", "clip") == "siglip"
    vision_cls = "SiglipVisionModel" if siglip else "CLIPVisionModelWithProjection"
    embeds_attr = "pooler_output" if siglip else "image_embeds"
    processor_cls = "SiglipImageProcessor" if siglip else "CLIPImageProcessor"
    lines = [
        f"# {name}: an LLM2CLIP model",
        "",
        "A CLIP-style image-text model whose text side is a frozen large language model (LLM2CLIP,",
        f"Huang et al. 2024): captions are embedded by the LLM ({contract.describe()}), mapped by a",
        "small trainable adapter into the joint space,",
        "and compared with the image embeddings of a CLIP ViT by cosine similarity. Exported by `llm2clip_nemo`.",
        "",
        "## Contents",
        "",
        f"- `{meta['vision']}/`: the vision tower as a stock `transformers` `{vision_cls}` "
        f"(ViT, {v['num_layers']} layers, width {v['width']}, patch {v['patch_size']}, {v['image_size']} px, "
        f"embedding {v['embed_dim']}) with its `preprocessor_config.json`.",
        f"- `{meta['adapter']}/`: the adapter ({a['num_blocks']} residual MLP blocks, {adapter_cfg['input_dim']} -> "
        f"{adapter_cfg['joint_dim']}) in safetensors, and the learned logit scale ({scale:.4g}).",
        f"- `{meta['llm']}/`: the frozen teacher LLM (hidden size {adapter_cfg['teacher_hidden_size']}) as a "
        "standard Hugging Face causal-LM directory with its tokenizer; teacher fingerprint "
        f"`{adapter_cfg['teacher_fingerprint']}`.",
        "- `llm2clip.json`: format version, layout and the full training configuration.",
        "",
        "## Training",
        "",
        f"- mode: {mc['mode']}" + (f" (vision initialised from `{mc['init_from']}`)" if mc["mode"] == "finetune" else ""),
        f"- teacher: `{tr['teacher_source']}` ({mc['teacher_mode']} teacher, {contract.describe()})",
        f"- loss: {mc['loss']['kind']}; optimizer AdamW lr {opt['lr']}, weight decay {opt['weight_decay']}, "
        f"warmup {opt['warmup_steps']} steps, layer decay {opt['layer_decay']}",
        f"- steps: {steps}",
        f"- data: `{tr['train_urls']}` (caption fields {mc['train_ds'].get('caption_fields')})",
        f"- exported from: `{tr['source']}` ({tr['layout']})",
        "",
        "## Usage",
        "",
        "With this package (images and captions into the joint space):",
        "",
        "```python",
        "from PIL import Image",
        "from llm2clip_nemo import LLM2CLIP",
        "",
        f'model = LLM2CLIP.from_pretrained("{name}")',
        'images = model.get_image_features([Image.open("cat.png")])      # [1, D], L2-normalised',
        'texts = model.get_text_features(["a cat", "a dog"])              # [2, D], L2-normalised',
        "logits = model.similarity(images, texts)                         # logit_scale * cosine",
        "```",
        "",
        "The vision tower alone with plain `transformers` (no trust_remote_code):",
        "",
        "```python",
        f"from transformers import AutoImageProcessor, {vision_cls}",
        "",
        f'vision = {vision_cls}.from_pretrained("{name}/{meta["vision"]}")',
        f'processor = AutoImageProcessor.from_pretrained("{name}/{meta["vision"]}")  # {processor_cls}',
        f'embeds = vision(**processor(images=[image], return_tensors="pt")).{embeds_attr}',
        "```",
        "",
        f"The text side needs the LLM in `{meta['llm']}/` run as its `teacher_contract.json` says "
        f"({contract.describe()}), then the adapter: `LLM2CLIP.get_text_features` does both.",
        *(["`SiglipImageProcessor` resizes the whole image to a square (no crop, as SigLIP does); our pipeline",
           "center-crops the short side first: the same pixels for square images, not for others."] if siglip else
          ["`CLIPImageProcessor` resizes and then crops in two steps; our pipeline does it in one, so pixel values",
           "may differ slightly for non-square images."]),
        "Its PIL backend (`backend=\"pil\"` in transformers >= 5) resizes as our pipeline does (PIL bicubic).",
        "",
    ]
    if not math.isfinite(scale):
        lines.append("Warning: the exported logit scale is not finite.")
    return "\n".join(lines)
