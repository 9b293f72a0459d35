"""PNG/JPEG frames: FFmpeg decodes 8-bit RGB PNGs exactly as Pillow does; bad bytes are named."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dexvla.data.images import decode_image, encode_image, is_rgb8_png


def test_rgb_png_round_trips_exactly_and_other_pngs_read_as_pillow_reads_them():
    frame = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    data = encode_image(frame)
    assert is_rgb8_png(data)
    decoded = decode_image(data)
    assert decoded.dtype == np.uint8 and decoded.flags.writeable
    np.testing.assert_array_equal(decoded, frame)
    for mode in ("L", "P", "RGBA", "I;16"):
        buffer = io.BytesIO()
        Image.fromarray(frame).convert(mode).save(buffer, format="PNG")
        assert not is_rgb8_png(buffer.getvalue())
        expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        np.testing.assert_array_equal(decode_image(buffer.getvalue()), expected)
    jpeg = decode_image(encode_image(frame, "jpeg"))
    assert jpeg.shape == frame.shape and not is_rgb8_png(encode_image(frame, "jpeg"))


@pytest.mark.parametrize("cut", [lambda d: d[: len(d) // 2], lambda d: d[:40] + b"x" * 300])
def test_broken_png_is_a_value_error_naming_the_frame(cut):
    data = encode_image(np.zeros((16, 16, 3), np.uint8) + 7)
    with pytest.raises(ValueError, match="episode 3 frame 5: cannot decode image"):
        decode_image(cut(data), "episode 3 frame 5")
    with pytest.raises(ValueError, match="cam: cannot decode image"):
        decode_image(b"not an image", "cam")
