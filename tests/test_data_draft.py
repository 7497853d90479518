"""JPEG draft decoding (libjpeg DCT scaling) against the full decode, on a real photograph.

matplotlib (a dependency) ships grace_hopper.jpg: a 512 x 600 baseline JPEG photo. Decoded for a
224-px output, libjpeg's 1/2 scale (256 x 300) still covers every crop, so the transform takes it.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from llm2clip_nemo.data.images import decode_image
from llm2clip_nemo.data.transforms import ImageTransform, TransformConfig


@pytest.fixture(scope="module")
def photo() -> bytes:
    from matplotlib import cbook

    with open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb") as f:
        return f.read()


@pytest.mark.parametrize("train", [False, True])
def test_draft_decode_is_within_2_levels_of_the_full_decode(photo, train):
    """Same crop (drawn in full-size pixels), same bicubic resize to 224: mean |draft - full| < 2/255."""
    draft = ImageTransform(TransformConfig(image_size=224, train=train, jpeg_draft=True))
    full = ImageTransform(TransformConfig(image_size=224, train=train, jpeg_draft=False))
    assert decode_image(photo).image.size == (512, 600)
    assert decode_image(photo, draft=draft._draft_need).image.size == (256, 300)  # the 1/2 scale was taken
    a = draft(photo, random.Random(3)).astype(np.int16)
    b = full(photo, random.Random(3)).astype(np.int16)
    assert a.shape == b.shape == (224, 224, 3)
    diff = np.abs(a - b)
    assert diff.mean() < 2.0  # measured: 1.63 (center crop), 1.49 (random resized crop)
    assert np.percentile(diff, 99) <= 16  # the rest sits on edges, where DCT scaling and bicubic differ
    assert abs(a.mean() - b.mean()) < 0.5  # no brightness or colour shift


def test_no_draft_when_the_image_is_under_twice_the_output(photo):
    """A 300-px output from a 512 x 600 picture: no power-of-2 scale covers it, the full decode is used."""
    tf = ImageTransform(TransformConfig(image_size=300, train=False, jpeg_draft=True))
    assert decode_image(photo, draft=tf._draft_need).image.size == (512, 600)
    full = ImageTransform(TransformConfig(image_size=300, train=False, jpeg_draft=False))
    assert np.array_equal(tf(photo, random.Random(0)), full(photo, random.Random(0)))
