"""The one image decoder: each odd input gives the picture a stock pipeline shows, or a reason."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
from fault_images import (
    bomb_png,
    cmyk_jpeg,
    encode,
    exif_jpeg,
    palette_alpha_png,
    ramp8,
    ramp16_png,
    truncated_jpeg,
    two_tone,
)
from PIL import Image
from synthetic_shards import jpeg

from llm2clip_nemo.data.images import ImageDecodeError, decode_image, decode_reason
from llm2clip_nemo.data.transforms import ImageTransform, TransformConfig


def _train(size=32, **kw):
    return ImageTransform(TransformConfig(image_size=size, train=True, **kw))


@pytest.mark.parametrize("kind", ["png16", "I", "F"])
def test_16bit_and_float_ramps_come_out_as_the_8bit_ramp(kind):
    """Issue 14.1: a 0..65535 ramp was clipped to white; scaled, it equals the 8-bit ramp exactly."""
    src = {"png16": ramp16_png(),
           "I": Image.fromarray(ramp8().astype(np.int32) * 257, "I"),
           "F": Image.fromarray(ramp8().astype(np.float32) / 255, "F")}[kind]
    ref = _train()(encode(Image.fromarray(ramp8()).convert("RGB")), random.Random(1))
    out = _train()(src, random.Random(1))
    assert decode_image(ramp16_png()).image.getextrema() == ((0, 255),) * 3
    assert np.abs(out.astype(int) - ref.astype(int)).max() == 0
    assert out.mean() == pytest.approx(ref.mean()) and 100 < out.mean() < 155  # not all white (255)


@pytest.mark.parametrize("draft", [False, True])
def test_exif_orientation_6_equals_the_prerotated_picture(draft, tmp_path):
    """Issue 14.2: an EXIF-6 JPEG gives the tensor of the upright picture, crop box included."""
    raw = two_tone(40, 24)  # stored landscape; orientation 6 shows it portrait, top half on the right
    data = exif_jpeg(raw, 6)
    stored = Image.open(io.BytesIO(data)).convert("RGB")  # the stored pixels, unrotated
    upright = encode(stored.transpose(Image.Transpose.ROTATE_270))  # lossless PNG of the upright picture
    tf = _train(16, jpeg_draft=draft)
    a, b = tf(data, random.Random(5)), tf(upright, random.Random(5))
    assert decode_image(data).size == (24, 40)
    assert np.array_equal(a, b)
    # stock transformers' load_image applies the same EXIF transpose
    from transformers.image_utils import load_image

    (tmp_path / "exif6.jpg").write_bytes(data)
    assert np.array_equal(np.asarray(decode_image(data).image), np.asarray(load_image(str(tmp_path / "exif6.jpg"))))


def test_exif_rotation_with_a_draft_decode_keeps_the_picture_upright():
    """A large EXIF-6 JPEG decoded at reduced scale: crop drawn in upright full-size pixels."""
    data = exif_jpeg(two_tone(800, 400), 6)
    dec = decode_image(data, draft=lambda w, h: (w // 8, h // 8))
    assert dec.size == (400, 800) and dec.image.size == (50, 100)  # libjpeg's 1/8 scale, upright
    out = ImageTransform(TransformConfig(image_size=16, train=False))(data, random.Random(0))
    # upright: the stored top (red) is on the right, the stored bottom (blue) on the left
    assert out[:, 12:, 0].min() > 200 and out[:, 12:, 2].max() < 60
    assert out[:, :4, 2].min() > 200 and out[:, :4, 0].max() < 60


def test_alpha_palette_and_cmyk_are_composited_and_converted():
    pal = np.asarray(decode_image(palette_alpha_png()).image)
    assert tuple(pal[0, 0]) == (0, 255, 0) and tuple(pal[0, 7]) == (255, 255, 255)  # transparent -> white
    la = Image.fromarray(np.stack([np.full((4, 4), 0, np.uint8), np.full((4, 4), 128, np.uint8)], -1), "LA")
    # black at alpha 128/255 over white: 255 * (1 - 128/255) = 127
    assert tuple(np.asarray(decode_image(encode(la)).image)[0, 0]) == (127, 127, 127)
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert tuple(np.asarray(decode_image(encode(rgba)).image)[0, 0]) == (255, 255, 255)
    # premultiplied grey 100 at alpha 128 is straight grey 199; over white: 199*128/255 + 255*127/255 = 227
    assert decode_image(Image.new("La", (4, 4), (100, 128))).image.getpixel((0, 0)) == (227, 227, 227)
    cyan = np.asarray(decode_image(cmyk_jpeg((255, 0, 0, 0))).image).astype(int)
    assert np.abs(cyan - np.array([0, 255, 255])).max() <= 3


def test_bombs_truncation_and_garbage_are_reasons_never_exceptions_of_their_own():
    assert decode_reason(bomb_png()) == "image_too_large"  # 10 gigapixels: refused at the header
    assert decode_reason(bomb_png(10_000, 10_000), max_pixels=50_000_000) == "image_too_large"
    assert decode_reason(truncated_jpeg()) == "truncated_image"
    assert decode_reason(jpeg(1)[:60]) == "truncated_image"
    assert decode_reason(b"") == "empty_image"
    assert decode_reason(b"not an image") == "corrupt_image"
    assert decode_reason(jpeg(3)) is None
    with pytest.raises(ImageDecodeError, match=r"^truncated_image: ") as e:
        _train()(truncated_jpeg(), random.Random(0))
    assert e.value.reason == "truncated_image"


def test_llm2clip_preprocessing_decodes_like_the_training_stream():
    """`LLM2CLIP.preprocess` (via preprocess_images): PIL 16-bit and EXIF inputs as the decoder sees them."""
    from llm2clip_nemo.data.transforms import normalize_batch, to_uint8_batch
    from llm2clip_nemo.hf_model import preprocess_images

    mean, std = [0.5] * 3, [0.25] * 3
    inputs = [Image.fromarray(ramp8().astype(np.int32) * 257, "I"), exif_jpeg(two_tone(40, 24), 6)]
    tf = ImageTransform(TransformConfig(image_size=16, train=False, mean=mean, std=std))
    ref = normalize_batch(to_uint8_batch([tf(encode(Image.fromarray(ramp8()).convert("RGB")), None),
                                          tf(inputs[1], None)]), mean, std)
    assert preprocess_images(inputs, 16, mean, std).equal(ref)
