"""The shared names: image keys, Reasoning, and the config-dict check every config uses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dexvla.policy.configuration import PolicyConfig, get_policy_preset
from dexvla.schema import (
    ENV_STATE,
    Reasoning,
    camera_of,
    check_known_fields,
    image_key,
    unknown_fields,
)


def test_image_keys_round_trip() -> None:
    assert image_key("cam_high") == "observation.images.cam_high"
    assert camera_of(image_key("cam_left_wrist")) == "cam_left_wrist"
    assert camera_of("observation.state") is None


def test_reasoning_texts_for_one_and_many() -> None:
    assert Reasoning(text="grasp the cube").texts == ["grasp the cube"]
    assert Reasoning(text=["a", "b"]).texts == ["a", "b"]


def test_config_dicts_with_unknown_keys_are_refused_by_name() -> None:
    data = get_policy_preset("tiny").to_dict()
    assert unknown_fields(PolicyConfig, data) == []
    check_known_fields(PolicyConfig, data)
    with pytest.raises(ValueError, match=r"unknown PolicyConfig keys: \['prompt_pooling'\]"):
        PolicyConfig.from_dict({**data, "prompt_pooling": "mean"})
    data["vlm"] = {**data["vlm"], "typo": 1}
    with pytest.raises(ValueError, match=r"unknown VLMConfig keys: \['typo'\]"):
        PolicyConfig.from_dict(data)


def test_episode_env_state_is_optional_and_checked_by_name(make_episode) -> None:
    episode = make_episode(length=5)
    assert ENV_STATE == "observation.environment_state" and episode.env_state is None
    episode.validate()
    dataclasses.replace(episode, env_state=np.zeros((5, 6), np.float32)).validate()
    bad = {
        r"env_state: expected float \(5, E\), got float32 \(4, 3\)": np.zeros((4, 3), np.float32),
        r"env_state: expected float \(5, E\), got float32 \(5,\)": np.zeros(5, np.float32),
        r"env_state: expected float \(5, E\), got int64": np.zeros((5, 3), np.int64),
        "env_state: contains NaN": np.full((5, 3), np.nan, np.float32),
    }
    for message, values in bad.items():
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(episode, env_state=values).validate()
