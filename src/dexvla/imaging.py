"""The one camera-image resize of training and inference: bilinear with antialiasing.

A foundation module (beside `stats`) because two peers need it: the data workers resize uint8
frames to the policy's size (small batches, no float copies of full-resolution images), and the
policy resizes whatever it is given with the same function, so an image reaches the VLM the same
way on both paths. uint8 images are resized as float in [0, 1] and rounded back, so a uint8
result is the float result to the nearest 1/255.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (on their device); float images -> float32 as given."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    return images.float()


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize images (B, 3, H, W) to `size` (h, w): bilinear with antialiasing.

    Float images (values in [0, 1]) come back float32 in [0, 1]; uint8 images come back uint8
    (the float result * 255, rounded). Images already at `size` are returned as they are.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    resized = F.interpolate(to_unit_float(images), size=size, mode="bilinear", antialias=True)
    resized = resized.clamp_(0.0, 1.0)  # (B, 3, h, w) float32, a new tensor
    if images.dtype == torch.uint8:
        return resized.mul_(255).round_().to(torch.uint8)
    return resized
