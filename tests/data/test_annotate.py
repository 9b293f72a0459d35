"""The sub-step annotator: synthetic ALOHA episodes, write-back, and the scripted experts."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from dexvla.data.act_hdf5 import ActHdf5Dataset, write_act_episode
from dexvla.data.annotate import (
    agreement,
    annotate_dataset,
    annotate_episode,
    gripper_runs,
    objects_from_task,
)
from dexvla.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer

TRANSFER = "pick up the red cube with the right arm and hand it over to the left arm"
INSERTION = "pick up the peg and the socket and insert the peg into the socket"


def test_gripper_runs_and_objects():
    g = np.concatenate([np.zeros(3), np.linspace(0, 1, 5), np.ones(4), np.linspace(1, 0.5, 3)])
    assert [(r.start, r.end) for r in gripper_runs(g, +1)] == [(3, 7)]
    assert [(r.start, r.end) for r in gripper_runs(g, -1)] == [(12, 14)]
    assert objects_from_task(TRANSFER) == ("cube", "cube")
    assert objects_from_task(INSERTION) == ("peg", "socket")
    assert objects_from_task("do something") == ("object", "object")


@pytest.mark.parametrize(("kind", "task"), [("handover", TRANSFER), ("bimanual", INSERTION)])
def test_synthetic_aloha_agreement(kind, task, synthetic_aloha):
    for seed in range(3):
        action, truth = synthetic_aloha(kind, seed)
        predicted = annotate_episode("aloha", action, task)
        assert set(predicted) == set(truth)
        assert agreement(predicted, truth) >= 0.95


def test_unknown_embodiment_and_bad_shapes():
    with pytest.raises(KeyError, match=r"no sub-step templates.*sawyer"):
        annotate_episode("sawyer", np.zeros((5, 4)), "push")
    with pytest.raises(ValueError, match=r"\(T, 14\)"):
        annotate_episode("aloha", np.zeros((5, 4)), "push")


def _unlabelled(make_episode, synthetic_aloha, seed, kind="handover"):
    action, truth = synthetic_aloha(kind, seed, length=400)
    episode = make_episode(seed, length=400, image_hw=(2, 2), task=TRANSFER)
    episode.action = action
    episode.substeps = [""] * 400
    return episode, truth


def test_annotate_lerobot_dataset_in_place(tmp_path, make_episode, synthetic_aloha):
    pairs = [_unlabelled(make_episode, synthetic_aloha, s) for s in range(2)]
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        for episode, _ in pairs:
            writer.add_episode(episode)
    result = annotate_dataset(tmp_path)
    assert result == {"episodes": 2, "annotated": 2, "skipped": 0}
    data = LeRobotV3Dataset(tmp_path)
    for i, (episode, truth) in enumerate(pairs):
        loaded = data.episode(i)
        assert agreement(loaded.substeps, truth) >= 0.95
        np.testing.assert_array_equal(loaded.images["cam_high"], episode.images["cam_high"])
    assert annotate_dataset(tmp_path)["skipped"] == 2
    scored = annotate_dataset(tmp_path, evaluate=True)
    assert scored["agreement"] == 1.0 and scored["annotated"] == 0


def test_annotate_hdf5_dataset_in_place(tmp_path, make_episode, synthetic_aloha):
    episode, truth = _unlabelled(make_episode, synthetic_aloha, 0)
    write_act_episode(tmp_path / "episode_0.hdf5", episode)
    assert annotate_dataset(tmp_path)["annotated"] == 1
    loaded = ActHdf5Dataset(tmp_path).episode(0)
    assert agreement(loaded.substeps, truth) >= 0.95
    np.testing.assert_array_equal(loaded.action, episode.action)
    assert not list(tmp_path.glob(".*"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="needs the simulator")
@pytest.mark.parametrize("task", ["aloha-transfer-cube", "aloha-insertion"])
def test_agreement_with_scripted_expert(task):
    from dexvla.data.annotate import evaluate_on_sim

    result = evaluate_on_sim(task, [0], image_size=16)
    assert result["agreement"] >= 0.9
