"""Stage 2's training network `LLM2CLIPNetwork` (no training logic), its layer ids for layer-wise lr
decay, and the fine-tune initialisation of its ViT from a Hugging Face vision checkpoint."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..losses import ClipInfoNCELoss, MultiPositiveInfoNCELoss, MultiPositiveSigLIPLoss, SigLIPLoss
from ..text.adapter import LLM2CLIPAdapter
from .llm2clip_config import LLM2CLIPConfig


class LLM2CLIPNetwork(nn.Module):
    """The stage-2 training network: vision tower + text adapter + loss parameters. The teacher is held
    outside (models/llm2clip.py). (The exported inference model is `llm2clip_nemo.hf_model.LLM2CLIP`.)"""

    def __init__(self, cfg: LLM2CLIPConfig, groups, teacher_dim: int):
        """`groups`: the run's `runtime.ParallelLayout`; `teacher_dim`: the teacher's hidden size
        (`text.config.teacher_hidden_size`), the adapter's input (its output is vision.embed_dim)."""
        super().__init__()
        from ..vision.vit import VisionTransformer

        self.vision = VisionTransformer(cfg.vision, groups)
        self.adapter = LLM2CLIPAdapter(cfg.adapter, teacher_dim, cfg.vision.embed_dim)
        lc = cfg.loss
        self.multi_positive = cfg.train_ds.caption_sampling == "all"
        if lc.kind == "clip":
            cls = MultiPositiveInfoNCELoss if self.multi_positive else ClipInfoNCELoss
            self.loss = cls(lc.init_logit_scale, lc.max_logit_scale)
        else:
            init = lc.init_logit_scale if lc.init_logit_scale != math.log(1 / 0.07) else math.log(10)
            cls = MultiPositiveSigLIPLoss if self.multi_positive else SigLIPLoss
            self.loss = cls(init_logit_scale=init, max_logit_scale=lc.max_logit_scale)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision(pixels)

    def text_features(self, teacher_emb: torch.Tensor) -> torch.Tensor:
        """[..., teacher dim] teacher embeddings -> [..., joint dim] text features (any leading dims)."""
        return self.adapter(teacher_emb.to(next(self.adapter.parameters()).dtype))

    def forward(self, pixels, teacher_emb, group=None, caption_mask=None) -> torch.Tensor:
        """Loss of pixels [B,3,S,S] and teacher_emb [B,dim] (one caption per image) or, with
        train_ds.caption_sampling=all, [B,K,dim] and caption_mask bool [B,K] (the multi-positive losses)."""
        if self.multi_positive:
            return self.loss(self.image_features(pixels), self.text_features(teacher_emb), caption_mask, group=group)
        return self.loss(self.image_features(pixels), self.text_features(teacher_emb), group=group)


def layer_id(name: str, num_layers: int) -> int:
    """0 for the ViT stem, i+1 for block i, L+1 for the head (and everything outside the ViT)."""
    if not name.startswith("vision."):
        return num_layers + 1
    rest = name[len("vision."):]
    if rest.startswith("decoder.layers."):
        return int(rest.split(".")[2]) + 1
    if rest.split(".")[0] in ("patch_embed", "class_token", "position_embeddings", "pre_layernorm"):
        return 0
    return num_layers + 1


def init_vision_from_hf(net: LLM2CLIPNetwork, path: str) -> None:
    """finetune: copy a HF CLIP or SigLIP vision checkpoint into the ViT (shapes must match model.vision)."""
    from ..formats.vision_checkpoint import match_vision_architecture, vit_from_hf

    hf_cfg, sd = vit_from_hf(path)
    mine = net.vision.cfg
    match_vision_architecture(mine, hf_cfg, f"model.init_from={path}")  # the config load adopted or checked it
    if mine.family != "siglip" and ("projection.weight" not in sd or sd["projection.weight"].shape[0] != mine.embed_dim):
        # the projection head is re-initialised (as in LLM2CLIP's fine-tune) when absent or resized
        sd["projection.weight"] = net.vision.projection.weight.detach().clone()
    net.vision.load_canonical_state_dict(sd)
