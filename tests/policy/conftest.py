"""Tiny policies and inputs shared by the model tests."""

import dataclasses

import numpy as np
import pytest
import torch

from dexvla.embodiments import get_embodiment
from dexvla.policy.configuration import get_policy_preset
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.policy.processor import DexVLAProcessor
from dexvla.schema import ACTION, ACTION_IS_PAD, EMBODIMENT, STATE, SUBSTEP, TASK, image_key
from dexvla.stats import DatasetStats

ALOHA = get_embodiment("aloha")


def tiny_config(**changes):
    """The tiny preset with 56 px cameras (4 tokens each) to keep tests quick."""
    config = get_policy_preset("tiny")
    vlm = dataclasses.replace(config.vlm, image_size=(56, 56), max_new_tokens=12)
    return config.replace(vlm=vlm, **changes)


def aloha_stats(seed: int = 0) -> DatasetStats:
    rng = np.random.default_rng(seed)
    return DatasetStats.from_arrays(
        "aloha", rng.normal(size=(64, 14)), rng.uniform(-2.0, 3.0, size=(64, 14))
    )


def make_policy(**changes) -> DexVLAPolicy:
    config = tiny_config(**changes)
    processor = DexVLAProcessor(config.vlm.image_size, config.embodiments, aloha_stats())
    return DexVLAPolicy(config, processor=processor)


def make_observation(seed: int = 0, size=(48, 64)) -> dict:
    rng = np.random.default_rng(seed)
    obs = {
        image_key(cam): rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        for cam in ALOHA.cameras
    }
    obs[STATE] = rng.normal(size=14).astype(np.float32)
    obs[TASK] = "transfer the cube"
    obs[EMBODIMENT] = "aloha"
    return obs


def make_batch(batch_size: int = 2, chunk: int = 50, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    batch = {
        image_key(cam): torch.rand(batch_size, 3, 48, 64, generator=gen) for cam in ALOHA.cameras
    }
    batch[STATE] = torch.randn(batch_size, 14, generator=gen)
    batch[ACTION] = torch.rand(batch_size, chunk, 14, generator=gen) * 2 - 1
    batch[ACTION_IS_PAD] = torch.zeros(batch_size, chunk, dtype=torch.bool)
    batch[TASK] = ["transfer the cube"] * batch_size
    batch[SUBSTEP] = ["grasp the cube with the right arm"] + [""] * (batch_size - 1)
    batch[EMBODIMENT] = ["aloha"] * batch_size
    return batch


@pytest.fixture
def policy() -> DexVLAPolicy:
    torch.manual_seed(0)
    return make_policy()
