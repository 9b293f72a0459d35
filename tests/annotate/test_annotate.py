"""The sub-step annotator: synthetic ALOHA and hand episodes, write-back, and the scripted
experts (ALOHA, Sawyer, hand)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from dexvla.annotate import (
    agreement,
    annotate_dataset,
    annotate_episode,
    evaluate_on_sim,
    gripper_runs,
    objects_from_task,
)
from dexvla.data.act_hdf5 import ActHdf5Dataset, write_act_episode
from dexvla.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer

TRANSFER = "pick up the red cube with the right arm and hand it over to the left arm"
INSERTION = "pick up the peg and the socket and insert the peg into the socket"
HAND_TASK = "pick up the red block and place it on the green pad"
needs_mujoco = pytest.mark.skipif(
    importlib.util.find_spec("mujoco") is None, reason="needs the simulator"
)
needs_metaworld = pytest.mark.skipif(
    importlib.util.find_spec("metaworld") is None, reason="needs MetaWorld"
)


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
    with pytest.raises(KeyError, match=r"no sub-step templates.*franka.*'hand', 'sawyer'"):
        annotate_episode("franka", np.zeros((5, 7)), "push")
    with pytest.raises(ValueError, match=r"\(T, 14\)"):
        annotate_episode("aloha", np.zeros((5, 4)), "push")
    with pytest.raises(ValueError, match=r"\(T, 4\)"):
        annotate_episode("sawyer", np.zeros((5, 14)), "reach the target with the gripper")
    with pytest.raises(ValueError, match=r"\(T, 18\)"):
        annotate_episode("hand", np.zeros((5, 4)), HAND_TASK)


def test_sawyer_reach_and_unreadable_tasks():
    labels = annotate_episode("sawyer", np.zeros((5, 4)), "reach the target with the gripper")
    assert labels == ["move the gripper to the target"] * 5
    for instruction, name in [("press the button", "button"), ("open the window", "window")]:
        with pytest.raises(ValueError, match=rf"sawyer-{name}-.*saturated.*sawyer-pick-place"):
            annotate_episode("sawyer", np.zeros((5, 4)), instruction)
    with pytest.raises(ValueError, match=r"unregistered Sawyer task \('juggle'\)"):
        annotate_episode("sawyer", np.zeros((5, 4)), "juggle")
    with pytest.raises(ValueError, match="sawyer-window-open"):
        evaluate_on_sim("sawyer-window-open", [0])  # before any rollout


def _hand_demo(seed: int, length: int = 210) -> tuple[np.ndarray, list[str]]:
    """The hand expert's open-loop plan for seed `seed`, without the simulator."""
    from dexvla.sim.hand import HandScriptedExpert, sample_layout

    expert = HandScriptedExpert()
    expert.reset(SimpleNamespace(unwrapped=SimpleNamespace(layout=sample_layout(seed))))
    steps = [expert.act({}) for _ in range(length)]
    return np.stack([a for a, _ in steps]), [text for _, text in steps]


@needs_mujoco
def test_hand_plan_agreement_and_cut_episodes():
    for seed in range(3):
        action, truth = _hand_demo(seed)
        predicted = annotate_episode("hand", action, HAND_TASK)
        assert set(predicted) == set(truth) and len(set(truth)) == 8
        assert agreement(predicted, truth) >= 0.95
        # a failed episode stops partway: its prefix still agrees
        for cut in (30, 50, 62, 70, 120, 170):
            assert agreement(annotate_episode("hand", action[:cut], HAND_TASK), truth[:cut]) >= 0.9


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


@needs_mujoco
def test_annotate_hand_dataset(tmp_path, make_episode):
    truths = []
    with LeRobotV3Writer(tmp_path, embodiment="hand", fps=25) as writer:
        for seed in range(2):
            episode = make_episode(seed, length=210, embodiment="hand", image_hw=(2, 2))
            episode.task = HAND_TASK
            episode.action, truth = _hand_demo(seed)
            episode.substeps = [""] * 210
            writer.add_episode(episode)
            truths.append(truth)
    assert annotate_dataset(tmp_path)["annotated"] == 2
    data = LeRobotV3Dataset(tmp_path)
    for i, truth in enumerate(truths):
        assert agreement(data.episode(i).substeps, truth) >= 0.95


def test_annotate_hdf5_dataset_in_place(tmp_path, make_episode, synthetic_aloha):
    episode, truth = _unlabelled(make_episode, synthetic_aloha, 0)
    write_act_episode(tmp_path / "episode_0.hdf5", episode)
    assert annotate_dataset(tmp_path)["annotated"] == 1
    loaded = ActHdf5Dataset(tmp_path).episode(0)
    assert agreement(loaded.substeps, truth) >= 0.95
    np.testing.assert_array_equal(loaded.action, episode.action)
    assert not list(tmp_path.glob(".*"))


@pytest.mark.slow
@needs_mujoco
@pytest.mark.parametrize("task", ["aloha-transfer-cube", "aloha-insertion"])
def test_agreement_with_scripted_expert(task):
    result = evaluate_on_sim(task, [0], image_size=16)
    assert result["agreement"] >= 0.9


@needs_mujoco
@pytest.mark.parametrize(
    "task",
    [
        pytest.param(name, marks=needs_metaworld)
        for name in ("sawyer-reach", "sawyer-pick-place", "sawyer-drawer-open")
    ]
    + ["hand-pick-place"],
)
def test_agreement_with_sawyer_and_hand_experts(task):
    result = evaluate_on_sim(task, [0, 1], image_size=8)
    assert result["min"] >= 0.9
