"""A tiny random-weight checkpoint for the evaluation tests."""

import dataclasses

import numpy as np
import pytest
import torch

from dexvla.policy.configuration import get_policy_preset
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.policy.processor import DexVLAProcessor
from dexvla.stats import DatasetStats


def tiny_policy() -> DexVLAPolicy:
    """The tiny preset with 56 px cameras and short generation; narrow action stats keep the
    random actions near the start pose, so the simulation stays stable."""
    torch.manual_seed(0)
    config = get_policy_preset("tiny")
    config = config.replace(
        vlm=dataclasses.replace(config.vlm, image_size=(56, 56), max_new_tokens=6)
    )
    rng = np.random.default_rng(0)
    stats = DatasetStats.from_arrays(
        "aloha", rng.normal(size=(64, 14)), rng.uniform(-0.2, 0.2, size=(64, 14))
    )
    processor = DexVLAProcessor(config.vlm.image_size, config.embodiments, stats)
    return DexVLAPolicy(config, processor=processor).eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("eval") / "tiny"
    tiny_policy().save_pretrained(directory)
    return str(directory)
