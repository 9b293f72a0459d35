"""What the annotators read off an episode's actions: gripper (or finger) opening and closing
runs, the object nouns of an instruction, and phase cuts turned into per-frame labels."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GRIPPER_STEP = 1e-3
GRIPPER_MIN_CHANGE = 0.2
OBJECT_NOUNS = (
    "cube", "peg", "socket", "block", "box", "ball", "cup", "bottle", "sleeve", "shirt",
    "towel", "lid", "can", "bowl", "plate", "spoon", "pen", "puck",
)  # fmt: skip


@dataclass(frozen=True)
class Run:
    """Frames [start, end) over which a gripper moves one way."""

    start: int
    end: int


def gripper_runs(g: np.ndarray, sign: int, min_change: float = GRIPPER_MIN_CHANGE) -> list[Run]:
    """Runs where the gripper opens (sign=+1) or closes (sign=-1) by at least `min_change`;
    a run ends at the first frame the gripper holds still again."""
    step = np.diff(g) * sign > GRIPPER_STEP
    runs, t = [], 0
    while t < len(step):
        if step[t]:
            end = t
            while end < len(step) and step[end]:
                end += 1
            if abs(g[end] - g[t]) >= min_change:
                runs.append(Run(t, end))
            t = end
        else:
            t += 1
    return runs


def objects_from_task(task: str) -> tuple[str, str]:
    """(inserted/held object, receptacle) nouns from an instruction; "object" if none known."""
    match = re.search(r"insert the (\w+) into the (\w+)", task)
    if match:
        return match.group(1), match.group(2)
    found = [w for w in re.findall(r"[a-z]+", task.lower()) if w in OBJECT_NOUNS]
    first = found[0] if found else "object"
    return first, found[1] if len(found) > 1 else first


def fill_labels(length: int, cuts: Sequence[tuple[int, str]]) -> list[str]:
    """Labels from (start, label) cuts; later cuts win where boundaries cross."""
    labels = [cuts[0][1]] * length
    for start, label in cuts:
        for t in range(max(0, start), length):
            labels[t] = label
    return labels
