"""Fixtures: a released-layout checkpoint in both file kinds (see released_facts.py)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from released_facts import as_file_dict, released_weights


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    return released_weights()


@pytest.fixture
def ckpt(tmp_path, weights):
    """A `.ckpt` as released: `['nets']['nets']` beside other (tensor-only) entries."""
    path = tmp_path / "scaledp_tiny.ckpt"
    ema = {k: v + 1 for k, v in as_file_dict(weights).items()}
    torch.save({"nets": {"nets": as_file_dict(weights), "ema": ema}, "epoch": 7}, path)
    return path


@pytest.fixture
def safetensors_file(tmp_path, weights):
    from safetensors.torch import save_file

    path = tmp_path / "scaledp_tiny.safetensors"
    save_file(as_file_dict(weights), str(path))
    return path
