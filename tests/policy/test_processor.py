"""The processor's checks of raw observations: one-line errors naming the camera or key."""

from __future__ import annotations

import numpy as np
import pytest

from dexvla.policy.processor import DexVLAProcessor
from dexvla.schema import STATE, image_key

from .conftest import aloha_stats, make_observation


@pytest.fixture
def processor() -> DexVLAProcessor:
    return DexVLAProcessor((56, 56), ("aloha", "sawyer"), aloha_stats())


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({image_key("cam_high"): np.zeros((0, 64, 3), np.uint8)}, "'cam_high'"),
        ({image_key("cam_left_wrist"): np.zeros((48, 0, 3), np.uint8)}, "'cam_left_wrist'"),
        ({image_key("cam_high"): np.zeros((48, 64, 4), np.uint8)}, "'cam_high'"),
        ({STATE: np.full(14, np.nan, np.float32)}, "'observation.state' contains NaN"),
        ({STATE: np.full(14, np.inf, np.float32)}, "'observation.state' contains NaN"),
        ({STATE: np.zeros(13, np.float32)}, "'observation.state' for 'aloha'"),
    ],
)
def test_a_bad_observation_is_one_line_naming_the_camera_or_key(processor, change, named):
    observation = {**make_observation(), **change}
    with pytest.raises(ValueError) as error:
        processor.prepare(observation)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_a_good_observation_passes(processor):
    batch, embodiment = processor.prepare(make_observation())
    assert embodiment == "aloha" and tuple(batch[STATE].shape) == (1, 14)
