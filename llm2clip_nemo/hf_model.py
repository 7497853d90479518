"""`LLM2CLIP`: use an exported model (`llm2clip-nemo convert export-hf`) for inference.

    model = LLM2CLIP.from_pretrained("export/")
    img = model.get_image_features([pil_image, ...])   # [N, D], L2-normalised
    txt = model.get_text_features(["a cat", ...])      # [M, D], L2-normalised
    logits = model.similarity(img, txt)                # logit_scale * cosine, [N, M]

Vision: the stock `transformers` CLIPVisionModelWithProjection in `vision/`. Text: the LLM in
`llm/` run by its teacher contract (`llm/teacher_contract.json`: attention, pooling, max length,
text preparation),
through the Hugging Face encoder backend (TP=1), or through our tensor-parallel Megatron teacher
when `tensor_parallel > 1`; then the adapter. Images go through the same eval transform as
training-time evaluation (resize + centre crop + CLIP normalisation).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .formats.contract import CONTRACT_FILE, TeacherContract, read_contract
from .text.preparation import prepare_texts


def image_source(image):
    """What the one decoder (`data.images.decode_image`) takes: bytes as given, a file path read to
    bytes, a PIL image as is (never re-encoded, so 16-bit and float modes keep their range)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if hasattr(image, "save") and hasattr(image, "mode"):
        return image
    raise TypeError(f"cannot read an image from {type(image).__name__}: pass PIL images, file paths or bytes.")


def preprocess_images(images: Sequence, image_size: int, mean, std) -> torch.Tensor:
    """Images (PIL, paths or encoded bytes) -> [N, 3, S, S] float pixels, our eval transform.

    Decoding is `data.images.decode_image` (EXIF orientation applied, as stock `transformers`
    `load_image` does; 16-bit scaled; alpha over white); an unusable image raises
    `ImageDecodeError` naming its reason."""
    import random

    from .data.transforms import ImageTransform, TransformConfig, normalize_batch, to_uint8_batch

    tf = ImageTransform(TransformConfig(image_size=image_size, train=False, mean=list(mean), std=list(std)))
    rng = random.Random(0)  # unused by the eval transform; the signature wants one
    arrays = [tf(image_source(im), rng) for im in images]
    return normalize_batch(to_uint8_batch(arrays), mean, std)


class LLM2CLIP(nn.Module):
    """Vision tower + LLM text encoder + adapter of an exported LLM2CLIP model."""

    def __init__(self, vision, adapter, text_encoder, tokenizer, contract: TeacherContract, config: dict,
                 logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None):
        super().__init__()
        self.contract = contract
        self.vision = vision
        self.adapter = adapter
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.config = config
        self.register_buffer("logit_scale", logit_scale.detach().clone())
        self.logit_bias = None if logit_bias is None else logit_bias.detach().clone()

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", tensor_parallel: int = 1,
                        dtype: torch.dtype = torch.float32) -> LLM2CLIP:
        """Load an export directory. tensor_parallel=1 runs the LLM with `transformers`;
        > 1 with our Megatron teacher split over the current TP group (launch with torchrun)."""
        from safetensors.torch import load_file
        from transformers import CLIPVisionModelWithProjection

        from .models.loading import EXPORT_FORMAT, UnknownLayoutError
        from .text.adapter import AdapterConfig, LLM2CLIPAdapter

        path = Path(path)
        index = path / "llm2clip.json"
        if not index.is_file():
            raise UnknownLayoutError(f"{path} has no llm2clip.json: not an LLM2CLIP export directory "
                                     "(make one with `llm2clip-nemo convert export-hf`).")
        meta = json.loads(index.read_text())
        if meta.get("format") != EXPORT_FORMAT:
            raise UnknownLayoutError(f"{index} has format {meta.get('format')!r}, expected {EXPORT_FORMAT!r}.")
        acfg = json.loads((path / meta["adapter"] / "config.json").read_text())
        fields = {f for f in AdapterConfig.__dataclass_fields__}
        adapter = LLM2CLIPAdapter(AdapterConfig(**{k: v for k, v in acfg.items() if k in fields}), acfg["input_dim"],
                                 acfg["joint_dim"])
        tensors = load_file(path / meta["adapter"] / "model.safetensors")
        adapter.load_state_dict({k.removeprefix("adapter."): v for k, v in tensors.items()
                                 if k.startswith("adapter.")}, strict=True)
        log_scale = tensors["loss.logit_scale"]
        max_log = meta["model_config"]["loss"]["max_logit_scale"]
        scale = log_scale.clamp(max=max_log).exp()
        vision = CLIPVisionModelWithProjection.from_pretrained(path / meta["vision"], dtype=dtype)
        llm_dir = path / meta["llm"]
        contract = read_contract(llm_dir)
        if contract is None:
            raise UnknownLayoutError(f"{llm_dir} has no {CONTRACT_FILE}: the export predates the teacher contract; "
                                     "re-export the model with `llm2clip-nemo convert export-hf`.")
        if tensor_parallel == 1:
            from .text.hf_encoder import HFEncoder

            encoder = HFEncoder.from_pretrained(llm_dir, pooling=contract.pooling,
                                                bidirectional=contract.bidirectional, dtype=dtype)
            tokenizer, hidden = encoder.tokenizer, encoder.hidden_size
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        else:
            from .runtime import init_parallel
            from .text.teacher import Teacher

            encoder = Teacher.load(llm_dir, init_parallel(tensor_parallel, field="tensor_parallel"), contract, params_dtype=dtype)
            tokenizer, hidden = encoder.tokenizer, encoder.hidden_size
        if adapter.input_dim != hidden:
            raise ValueError(f"embedding dimension mismatch in {path}: the adapter takes {adapter.input_dim}-dim "
                             f"LLM embeddings but {llm_dir} has hidden size {hidden}: the export is inconsistent; "
                             "re-export the model.")
        model = cls(vision.eval(), adapter.eval(), encoder, tokenizer, contract, {**acfg, "export": meta}, scale,
                    tensors.get("loss.logit_bias"))
        return model.to(device)

    # -- features --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    def preprocess(self, images: Sequence) -> torch.Tensor:
        """Images -> normalised pixels [N, 3, S, S] (the eval transform of training)."""
        t = self.config["export"]["model_config"]["train_ds"]["transform"]
        return preprocess_images(images, self.image_size, t["mean"], t["std"])

    @torch.inference_mode()
    def get_image_features(self, images) -> torch.Tensor:
        """PIL images / paths / bytes, or a pixel tensor [N, 3, S, S] -> L2-normalised [N, D] fp32."""
        pixels = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        dtype = next(self.vision.parameters()).dtype
        out = self.vision(pixel_values=pixels.to(self.device, dtype)).image_embeds
        return F.normalize(out.float(), dim=-1)

    @torch.inference_mode()
    def get_llm_embeddings(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Captions -> the frozen LLM's pooled embeddings [N, H] fp32 (before the adapter)."""
        texts = list(texts)
        if hasattr(self.text_encoder, "encode_texts"):  # the Megatron teacher (tensor_parallel > 1)
            return self.text_encoder.encode_texts(texts, batch_size=batch_size)
        self.text_encoder.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask, pool = prepare_texts(self.tokenizer, texts[i:i + batch_size], self.contract)
            dev = self.device
            out.append(self.text_encoder(ids.to(dev), mask.to(dev), pool.to(dev)).float().cpu())
        return torch.cat(out) if out else torch.empty(0, int(self.config["input_dim"]))

    @torch.inference_mode()
    def adapt(self, llm_embeddings: torch.Tensor) -> torch.Tensor:
        """LLM embeddings [N, H] -> L2-normalised text features [N, D] (the adapter)."""
        w = self.adapter.proj.weight
        return F.normalize(self.adapter(llm_embeddings.to(w.device, w.dtype)).float(), dim=-1)

    def get_text_features(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Captions -> L2-normalised [N, D] fp32: the LLM, then the adapter."""
        return self.adapt(self.get_llm_embeddings(texts, batch_size))

    def similarity(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """[N, M] logits: logit_scale * cosine (+ logit_bias for a SigLIP-trained model)."""
        img = F.normalize(image_features.float(), dim=-1)
        txt = F.normalize(text_features.float(), dim=-1).to(img.device)
        logits = self.logit_scale.to(img.device) * img @ txt.T
        return logits if self.logit_bias is None else logits + self.logit_bias.to(img.device)
