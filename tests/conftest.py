"""Shared test settings (CPU, fp32, deterministic, offscreen rendering) and synthetic episodes."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable

import numpy as np
import pytest
import torch

from dexvla.embodiments import get_embodiment
from dexvla.schema import Episode


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


def synthetic_episode(
    seed: int = 0,
    *,
    length: int = 12,
    embodiment: str = "aloha",
    image_hw: tuple[int, int] = (8, 10),
    task: str = "pick up the cube",
) -> Episode:
    """Random state/action/images with a sub-step that changes every 4 frames."""
    rng = np.random.default_rng(seed)
    spec = get_embodiment(embodiment)
    return Episode(
        embodiment=embodiment,
        task=task,
        images={
            cam: rng.integers(0, 256, (length, *image_hw, 3), dtype=np.uint8)
            for cam in spec.cameras
        },
        state=rng.normal(size=(length, spec.state_dim)).astype(np.float32),
        action=rng.normal(size=(length, spec.action_dim)).astype(np.float32),
        substeps=[f"step {t // 4} of episode {seed}" for t in range(length)],
        reward=rng.random(length).astype(np.float32),
        success=bool(seed % 2 == 0),
        seed=seed,
        task_name="synthetic",
        info={"note": "synthetic", "seed": seed},
    )


@pytest.fixture
def make_episode() -> Callable[..., Episode]:
    return synthetic_episode
