"""A stock Hugging Face `CLIPModel` directory (its own text tower) as an evaluation baseline.

`StockCLIP.from_pretrained(dir)` reads `config.json` (model_type "clip"), the weights, the
tokenizer and `preprocessor_config.json` (image_mean, image_std, crop_size) as
`transformers.CLIPProcessor` would. Captions are truncated to the text tower's context
(`text_config.max_position_embeddings`, 77 for OpenAI CLIP), as CLIP's own tokenizer does.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def is_stock_clip(path: str | Path) -> bool:
    """True for a directory whose config.json says model_type "clip" (a full CLIPModel)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "clip"
    except (OSError, json.JSONDecodeError):
        return False


class StockCLIP:
    """The image and text towers of a `transformers.CLIPModel`, with its tokenizer and pixel stats."""

    def __init__(self, model, tokenizer, image_size: int, mean: Sequence[float], std: Sequence[float],
                 path: str = ""):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.image_size, self.mean, self.std, self.path = image_size, list(mean), list(std), path
        self.max_tokens = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> StockCLIP:
        from transformers import AutoTokenizer, CLIPModel

        path = Path(path)
        model = CLIPModel.from_pretrained(path).to(device)
        tok = AutoTokenizer.from_pretrained(path)
        pp_file = path / "preprocessor_config.json"
        pp = json.loads(pp_file.read_text()) if pp_file.is_file() else {}
        crop = pp.get("crop_size", model.config.vision_config.image_size)
        size = crop.get("height", crop.get("shortest_edge")) if isinstance(crop, dict) else crop
        return cls(model, tok, int(size), pp.get("image_mean", OPENAI_MEAN), pp.get("image_std", OPENAI_STD),
                   str(path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def get_image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised pixels -> [B, projection_dim] (not normalised)."""
        out = self.model.get_image_features(pixel_values=pixels.to(self.device, next(self.model.parameters()).dtype))
        return _projected(out)

    @torch.no_grad()
    def get_text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> [B, projection_dim], each truncated to `max_tokens` tokens (EOS kept)."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt").to(self.device)
        return _projected(self.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))


def _projected(out) -> torch.Tensor:
    """transformers < 5 returns the projected features; 5.x an output whose pooler_output holds them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
