"""The one image resize: float in, float out; uint8 in, the float result rounded to uint8."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dexvla.imaging import resize_images, to_unit_float


def test_float_resize_is_bilinear_with_antialias_in_unit_range():
    images = torch.rand(2, 3, 40, 60)
    out = resize_images(images, (20, 28))
    expected = F.interpolate(images, size=(20, 28), mode="bilinear", antialias=True)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 20, 28)
    torch.testing.assert_close(out, expected.clamp(0, 1))
    assert resize_images(images, (40, 60)) is images


def test_uint8_resize_rounds_the_float_result():
    images = torch.randint(0, 256, (2, 3, 37, 53), dtype=torch.uint8)
    out = resize_images(images, (28, 14))
    as_float = resize_images(images.float() / 255, (28, 14))
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 28, 14)
    assert torch.equal(out, (as_float * 255).round().to(torch.uint8))
    assert (out.float() / 255 - as_float).abs().max() <= 0.5 / 255 + 1e-6


def test_to_unit_float_and_bad_input():
    assert torch.equal(to_unit_float(torch.tensor([0, 255], dtype=torch.uint8)),
                       torch.tensor([0.0, 1.0]))  # fmt: skip
    with pytest.raises(ValueError, match="uint8 or floating"):
        to_unit_float(torch.zeros(1, 3, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        resize_images(torch.zeros(3, 4, 4), (2, 2))
