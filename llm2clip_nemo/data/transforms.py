"""Image transforms with PIL + torch only (no torchvision on the CPU path).

Each transform maps encoded image bytes (decoded by `data.images.decode_image`: upright, RGB,
16-bit scaled, alpha over white) to a uint8 HWC array of the output size; crop boxes are drawn
on the upright full-resolution picture. Normalisation runs once per batch (`normalize_batch`),
which is cheaper than per image. Randomness comes from a `random.Random` the caller seeds per
sample, so a resumed stream draws the same crops.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from ..config.loader import ConfigError
from ..config.paths import field_path
from .images import decode_image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TransformConfig:
    CONFIG_PATH: ClassVar[str] = "transform"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    image_size: int = 224
    """Output side length in pixels (square)."""
    train: bool = True
    """True: RandomResizedCrop; False: resize the short side then center crop."""
    scale: list[float] = field(default_factory=lambda: [0.9, 1.0])
    """RandomResizedCrop area fraction range (LLM2CLIP uses 0.9-1.0; open_clip 0.9-1.0 too)."""
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    """RandomResizedCrop aspect ratio range."""
    mean: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_MEAN))
    """Per-channel mean subtracted after scaling to [0, 1] (OpenAI CLIP by default)."""
    std: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_STD))
    """Per-channel std divided after the mean (OpenAI CLIP by default)."""
    jpeg_draft: bool = True
    """Let libjpeg decode at a reduced scale (1/2, 1/4, 1/8) when the crop is still >= image_size
    pixels after it: same output size, far less decode work for large JPEGs."""

    def validate(self) -> None:
        """ConfigError naming the field by its path in the recipe (`config.paths.field_path`)."""
        if self.image_size < 8:
            raise ConfigError(f"{field_path(self, 'image_size')}={self.image_size} is too small; use e.g. 224")
        if not (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1):
            raise ConfigError(f"{field_path(self, 'scale')}={self.scale} must be [lo, hi] with 0 < lo <= hi <= 1, "
                              "e.g. [0.9, 1.0]")
        if not (len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ConfigError(f"{field_path(self, 'ratio')}={self.ratio} must be [lo, hi] with 0 < lo <= hi, "
                              "e.g. [0.75, 1.333]")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"{field_path(self, 'mean')}/std must have 3 values with std > 0, got {self.mean} / "
                              f"{self.std}")


def random_resized_crop_box(w: int, h: int, scale, ratio, rng: random.Random) -> tuple[int, int, int, int]:
    """The crop box (left, top, right, bottom) of torchvision's RandomResizedCrop.get_params."""
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ar = math.exp(rng.uniform(*log_r))
        cw = round(math.sqrt(target * ar))
        ch = round(math.sqrt(target / ar))
        if 0 < cw <= w and 0 < ch <= h:
            top = rng.randint(0, h - ch)
            left = rng.randint(0, w - cw)
            return left, top, left + cw, top + ch
    # Fallback: the largest center crop with the ratio clamped into range.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def center_crop_box(w: int, h: int) -> tuple[float, float, float, float]:
    """Resize-short-side then center-crop, expressed as one square box in source pixels."""
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return left, top, left + side, top + side


class ImageTransform:
    """Encoded bytes (or a PIL image) -> uint8 array [size, size, 3] of the upright RGB picture.

    Decoding is `data.images.decode_image` (EXIF orientation, 16-bit scaling, alpha over white);
    an unusable image raises `ImageDecodeError` whose `.reason` the caller counts.
    """

    def __init__(self, cfg: TransformConfig):
        cfg.validate()
        self.cfg = cfg

    def _draft_need(self, w: int, h: int) -> tuple[int, int] | None:
        """The smallest (w, h) a reduced-scale JPEG decode may have so every possible crop keeps >= size px."""
        size = self.cfg.image_size
        if self.cfg.train:
            lo, (r0, r1) = self.cfg.scale[0], self.cfg.ratio
            min_cw = math.sqrt(lo * w * h * r0)
            min_ch = math.sqrt(lo * w * h / r1)
        else:
            min_cw = min_ch = min(w, h)
        need = (math.ceil(w * size / max(min_cw, 1)), math.ceil(h * size / max(min_ch, 1)))
        return need if need[0] < w and need[1] < h else None

    def __call__(self, data: bytes | Image.Image, rng: random.Random) -> np.ndarray:
        dec = decode_image(data, draft=self._draft_need if self.cfg.jpeg_draft else None)
        img, (w0, h0) = dec.image, dec.size
        # Boxes are drawn in full-resolution upright pixels so a draft decode does not change the crop drawn.
        size = self.cfg.image_size
        if self.cfg.train:
            box = random_resized_crop_box(w0, h0, self.cfg.scale, self.cfg.ratio, rng)
        else:
            box = center_crop_box(w0, h0)
        sx, sy = img.size[0] / w0, img.size[1] / h0
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        out = img.resize((size, size), Image.BICUBIC, box=box)
        return np.asarray(out, dtype=np.uint8)


def to_uint8_batch(arrays: list[np.ndarray]) -> torch.Tensor:
    """list of HWC uint8 -> [B, 3, H, W] uint8."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def normalize_batch(x: torch.Tensor, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> torch.Tensor:
    """[B, 3, H, W] uint8 (any strides) -> contiguous float32, (x/255 - mean) / std.

    Made contiguous while still uint8 (1/4 of the bytes), then one fused multiply-add in place."""
    scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, 3, 1, 1)
    shift = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1)
    out = x.contiguous().to(torch.float32)
    return out.mul_(scale).add_(shift)
