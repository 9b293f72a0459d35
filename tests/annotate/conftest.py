"""Synthetic ALOHA episodes with known sub-steps, for the annotator tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _segments(waypoints: list[tuple[int, np.ndarray]], length: int) -> np.ndarray:
    """Piecewise-linear interpolation between (frame, value) waypoints, held after the last."""
    times = [t for t, _ in waypoints]
    values = np.stack([v for _, v in waypoints])
    frames = np.arange(length)
    return np.stack(
        [np.interp(frames, times, values[:, d]) for d in range(values.shape[1])], axis=1
    )


def _synthetic_aloha(kind: str, seed: int = 0, length: int = 400) -> tuple[np.ndarray, list[str]]:
    """ALOHA-like (T, 14) actions with the expert's phase timing, and the true labels."""
    rng = np.random.default_rng(seed)

    def pose() -> np.ndarray:
        return rng.normal(size=6)

    def unit() -> np.ndarray:
        direction = rng.normal(size=6)
        return direction / np.linalg.norm(direction)

    if kind == "handover":
        r = [pose(), pose(), pose(), pose(), pose()]
        left = [pose(), pose(), pose()]
        right_joints = _segments(
            [(0, r[0]), (90, r[1]), (130, r[2]), (170, r[2]), (220, r[3]), (300, r[3]),
             (320, r[3]), (360, r[4])],
            length,
        )  # fmt: skip
        left_joints = _segments([(0, left[0]), (100, left[1]), (260, left[2])], length)
        right_g = _segments([(0, [0]), (90, [1]), (130, [1]), (170, [0]), (300, [0]),
                             (320, [1])], length)  # fmt: skip
        left_g = _segments([(0, [0]), (100, [1]), (260, [1]), (290, [0])], length)
        truth = [
            (0, "reach above the cube with the right arm"),
            (90, "lower the right gripper to the cube"),
            (130, "grasp the cube with the right gripper"),
            (170, "lift the cube and carry it to the middle"),
            (220, "bring the left gripper to the cube"),
            (260, "grasp the cube with the left gripper"),
            (290, "release the cube from the right gripper"),
            (320, "hold the cube with the left arm"),
        ]
    else:
        lj, rj = [], []
        for joints in (lj, rj):
            start, above, down = pose(), pose(), pose()
            lifted = down + unit()  # fast transport, then slower fine motion (as the expert)
            meet = lifted + 0.15 * unit()
            deep = meet + 0.05 * unit()
            joints.append(
                _segments(
                    [(0, start), (120, above), (170, down), (220, down), (285, lifted),
                     (340, meet), (370, deep)],
                    length,
                )
            )  # fmt: skip
        left_joints, right_joints = lj[0], rj[0]
        left_g = right_g = _segments([(0, [0]), (120, [1]), (170, [1]), (220, [0])], length)
        truth = [
            (0, "reach above the socket with the left arm and the peg with the right arm"),
            (120, "lower both grippers"),
            (170, "grasp the socket and the peg"),
            (220, "lift both and bring them together"),
            (285, "insert the peg into the socket"),
            (370, "hold the peg in the socket"),
        ]
    action = np.concatenate([left_joints, left_g, right_joints, right_g], axis=1)
    labels = []
    for t in range(length):
        labels.append([text for start, text in truth if t >= start][-1])
    return action.astype(np.float32), labels


@pytest.fixture
def synthetic_aloha() -> Callable[..., tuple[np.ndarray, list[str]]]:
    return _synthetic_aloha
