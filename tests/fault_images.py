"""Encoded images of the kinds users' shards hold, made on the fly (no files in the repo)."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from synthetic_shards import jpeg


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def ramp8(w: int = 256, h: int = 8) -> np.ndarray:
    """uint8 [h, w] horizontal ramp 0..255."""
    return np.repeat(np.round(np.linspace(0, 255, w)).astype(np.uint8)[None], h, 0)


def ramp16_png(w: int = 256, h: int = 8) -> bytes:
    """16-bit greyscale PNG: the 8-bit ramp times 257 (0..65535)."""
    return encode(Image.fromarray(ramp8(w, h).astype(np.uint16) * 257))


def two_tone(w: int, h: int) -> Image.Image:
    """Top half red, bottom half blue: which way is up is visible in any crop."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, :, 0] = 255
    a[h // 2:, :, 2] = 255
    return Image.fromarray(a)


def exif_jpeg(img: Image.Image, orientation: int = 6, **kw) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif, quality=95, **kw)


def bomb_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A PNG whose header claims w x h pixels (10 gigapixels by default) over a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    """A JPEG whose header is intact but whose scan data stops short."""
    return jpeg(7, size=(300, 300))[:-400]


def cmyk_jpeg(cmyk=(255, 0, 0, 0), size=(16, 16)) -> bytes:
    return encode(Image.new("CMYK", size, cmyk), "JPEG", quality=100)


def palette_alpha_png() -> bytes:
    """Palette image: index 0 fully transparent (red underneath), index 1 opaque green."""
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (0, 0, 4, 8))
    return encode(img, transparency=0)
