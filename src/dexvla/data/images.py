"""Frame <-> PNG/JPEG bytes, shared by the LeRobot and HDF5 formats.

Decoding is the larger part of a training sample's cost: 8-bit RGB PNGs (what the writer stores)
are decoded by FFmpeg's PNG decoder through PyAV, about a quarter faster than Pillow on 640x480
frames, pixel for pixel the same; other images (JPEG, palette, grey, 16-bit, interlaced) by
Pillow.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from dexvla.io import one_line

IMAGE_FORMATS = ("png", "jpeg")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_image(frame: np.ndarray, image_format: str = "png", quality: int = 95) -> bytes:
    """uint8 (H, W, 3) -> PNG (lossless, fast compression) or JPEG bytes at `quality`."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def is_rgb8_png(data: bytes) -> bool:
    """A PNG whose header says 8-bit RGB, not interlaced (IHDR: depth 8, colour type 2)."""
    return (
        len(data) > 33
        and data[:8] == PNG_SIGNATURE
        and data[12:16] == b"IHDR"
        and (data[24], data[25], data[28]) == (8, 2, 0)
    )


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, 3); undecodable bytes are a ValueError naming `where`."""
    if is_rgb8_png(data):
        import av  # the video reader's dependency, here for its PNG decoder

        context = av.CodecContext.create("png", "r")
        context.thread_count = 1  # one frame at a time: no frame threads to wait for
        try:
            frames = context.decode(av.Packet(data))
        except av.FFmpegError as error:
            raise ValueError(f"{where}: cannot decode image ({one_line(error)})") from None
        if len(frames) != 1:
            raise ValueError(f"{where}: cannot decode image ({len(frames)} frames in a PNG)")
        return frames[0].to_ndarray(format="rgb24")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError(
            f"{where}: cannot decode image (not PNG or JPEG, {len(data)} bytes)"
        ) from None
    except OSError as error:
        raise ValueError(f"{where}: cannot decode image ({one_line(error)})") from None
