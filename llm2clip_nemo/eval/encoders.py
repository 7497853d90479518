"""Model adapters: what evaluation needs from a model (image features, raw LLM embeddings, the
adapter), whatever its class, and where feature extraction spreads its work.

The only module of `eval/` that knows model classes: `LLM2CLIPModel` (our Megatron teacher, from
`models.loading.load_llm2clip`), `LLM2CLIP` (the exported inference class, `hf_model`) and
`StockCLIP` (a stock Hugging Face `CLIPModel` directory as a baseline). Every other module takes
the `Encoders` value or plain callables.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .features import extract_features


@dataclass
class Encoders:
    """What evaluation needs from a model, whatever its class."""

    image: Callable
    """normalised pixels [B, 3, S, S] -> image features [B, D]."""
    llm: Callable
    """list of captions -> raw LLM embeddings [B, H]."""
    adapt: Callable
    """LLM embeddings [B, H] -> text features [B, D]."""
    image_size: int
    """Side S of the square input, pixels."""
    mean: list
    """Per-channel pixel mean of the model's eval transform (0..1 scale)."""
    std: list
    """Per-channel pixel std of the model's eval transform (0..1 scale)."""
    image_group: object = None
    """Group to spread images over (None: this process does all)."""
    text_group: object = None
    """Group to spread captions over: ranks of one TP teacher group must get the same captions."""
    describe: str = ""
    """The model, in words, for reports."""


def _tp_teacher_groups(model):
    """The `ParallelLayout` of a model whose LLM is split tensor-parallel (None: the LLM is whole on
    every rank, as in a stock CLIP or an export run with `transformers`)."""
    from ..hf_model import LLM2CLIP
    from ..models.stock_clip import StockCLIP

    if isinstance(model, StockCLIP):
        return None
    if isinstance(model, LLM2CLIP):  # tensor_parallel > 1 loads our Megatron teacher, which keeps its groups
        return getattr(model.text_encoder, "groups", None) if hasattr(model.text_encoder, "encode_texts") else None
    return model.groups


def spread_groups(model, groups=None) -> tuple[object, object]:
    """(image group, text group) for `features.extract_features`; (None, None) in one process.

    Images go over the vision tower's data-parallel group, `groups.vision_dp_group` (every rank).
    Captions go over the teacher's data-parallel group, `groups.dp_group`, when the model runs a
    tensor-parallel teacher (the ranks of one TP group encode the same captions together), else
    over every rank. groups: a `runtime.ParallelLayout`; None takes the model's own (its teacher's), else this
    process's layout (`runtime.current_layout`, built over the running process group when absent).
    """
    from ..runtime import current_layout, init_parallel, process_count

    if process_count() == 1:
        return None, None

    own = _tp_teacher_groups(model)
    groups = groups if groups is not None else own
    if groups is None:  # this process's layout (built here over the running process group if none is)
        groups = current_layout() or init_parallel(1, megatron=False)
    world = groups.vision_dp_group
    return world, (groups.dp_group if own is not None else world)


def encoders_for(model, groups=None) -> Encoders:
    """Encoders of an `LLM2CLIPModel` (Megatron teacher), an `LLM2CLIP` (exported, HF), or a
    `StockCLIP` (a stock HF CLIPModel: its own text tower, `adapt` the identity).

    groups: the `runtime.ParallelLayout` to spread extraction over (see `spread_groups`)."""
    from ..hf_model import LLM2CLIP
    from ..models.stock_clip import StockCLIP

    img_g, txt_g = spread_groups(model, groups)
    if isinstance(model, StockCLIP):
        return Encoders(model.get_image_features, model.get_text_features, lambda x: x, model.image_size,
                        model.mean, model.std, img_g, txt_g, f"stock CLIP {model.path}".strip())
    if isinstance(model, LLM2CLIP):
        t = model.config["export"]["model_config"]["train_ds"]["transform"]
        return Encoders(model.get_image_features, model.get_llm_embeddings, model.adapt, model.image_size,
                        t["mean"], t["std"], img_g, txt_g, "LLM2CLIP export")
    tc = model.typed

    def llm(texts):
        return model.teacher.encode_texts(texts, batch_size=tc.teacher.batch_size,
                                          max_tokens=tc.teacher.max_tokens or None)

    info = getattr(model, "load_info", None)
    return Encoders(model.encode_images, llm, model.encode_teacher_embeddings, tc.vision.image_size,
                    list(tc.train_ds.transform.mean), list(tc.train_ds.transform.std), img_g, txt_g,
                    info.path if info is not None else "LLM2CLIPModel")


def load_any_model(path: str, tensor_parallel: int = 1, teacher_path: str | None = None, groups=None):
    """A stock HF CLIPModel directory as `StockCLIP`, anything else by `models.loading.load_llm2clip`
    (run dir, .nemo, .ckpt, export). Raises `models.loading.UnknownLayoutError` for anything else."""
    from ..models.stock_clip import StockCLIP, is_stock_clip

    if is_stock_clip(path):
        return StockCLIP.from_pretrained(path, "cuda" if torch.cuda.is_available() else "cpu")
    from ..models.loading import load_llm2clip

    return load_llm2clip(path, tensor_parallel=tensor_parallel, teacher_path=teacher_path, groups=groups)


def image_features_fn(enc: Encoders, images) -> Callable[[list[int]], torch.Tensor]:
    """`batch(indices) -> [len, D]` float32 CPU features of `images[i]` (bytes, paths or PIL images)."""
    from ..hf_model import preprocess_images

    def batch(idx):
        return enc.image(preprocess_images([images[i] for i in idx], enc.image_size, enc.mean, enc.std)).float().cpu()

    return batch


def adapt_all(enc: Encoders, raw: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """LLM embeddings [N, H] -> text features [N, D] float32 CPU, in chunks of 16 * batch_size rows
    (the adapter is cheap; chunks only bound its activation memory)."""
    chunk = 16 * batch_size
    return torch.cat([enc.adapt(raw[i:i + chunk]).float().cpu() for i in range(0, len(raw), chunk)])


def model_scorers(model, batch_size: int = 64, groups=None):
    """(image_features(paths), text_features(texts), llm_features or None, describe) for any model
    `encoders_for` takes; data-parallel under torchrun (every rank calls with the same lists)."""
    from ..models.stock_clip import StockCLIP

    enc = encoders_for(model, groups)

    def image_features(paths):
        return extract_features(list(range(len(paths))), image_features_fn(enc, paths), batch_size,
                                group=enc.image_group).cpu()

    def llm_features(texts):
        return extract_features(list(texts), lambda b: enc.llm(b).float().cpu(), batch_size,
                                group=enc.text_group).cpu()

    def text_features(texts):
        return adapt_all(enc, llm_features(texts), batch_size)

    return image_features, text_features, (None if isinstance(model, StockCLIP) else llm_features), enc.describe
