"""Frame <-> PNG/JPEG bytes, shared by the LeRobot and HDF5 formats."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

IMAGE_FORMATS = ("png", "jpeg")


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


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, 3); undecodable bytes are a ValueError naming `where`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except OSError as error:
        raise ValueError(f"{where}: cannot decode image ({error})") from None
