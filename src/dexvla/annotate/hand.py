"""Dexterous-hand sub-steps from the 18-D actions.

Episodes (`dexvla.sim.hand`) are cut at the finger closing and opening runs (the mean finger
command) and at the wrist's change of motion direction: the descent before the grasp is
vertical, the carry horizontal, the placing descent vertical again.
"""

from __future__ import annotations

import re

import numpy as np

from dexvla.annotate.events import fill_labels, gripper_runs, objects_from_task

HAND = {
    "reach": "move the hand above the {obj}",
    "lower": "lower the hand around the {obj}",
    "close": "close the fingers on the {obj}",
    "lift": "lift the {obj}",
    "carry": "carry the {obj} over the {target}",
    "place": "lower the {obj} onto the pad",
    "open": "open the hand",
    "away": "lift the hand away",
}
# hand action layout (18-D): 0-2 wrist xyz, 3-5 wrist rotation, 6-17 finger joints
HAND_WRIST_XY, HAND_WRIST_Z, HAND_FINGERS = slice(0, 2), 2, slice(6, 18)
HAND_VERTICAL = 0.1  # a descent is vertical while its xy speed is at most this share of z
HAND_MIN_CHANGE = 0.05  # mean finger joint change (rad) of a closing or opening run


def _hand_nouns(task: str) -> tuple[str, str]:
    """(object, target) phrases of a "pick up the X and place it on the Y" instruction."""
    match = re.search(r"pick up the (.+?) and place it on the (.+?)\.?$", task.strip())
    if match:
        return match.group(1), match.group(2)
    obj = objects_from_task(task)[0]
    return obj, "pad"


def annotate_hand(action: np.ndarray, task: str) -> list[str]:
    """Per-frame sub-step text for one dexterous-hand episode's (T, 18) actions.

    A phase starts at the first frame whose command moves the new way (`np.diff` puts frame
    t's motion at t - 1, hence the +1 on run bounds and the velocities' index).
    """
    if action.ndim != 2 or action.shape[1] != 18:
        raise ValueError(f"annotate_hand: expected (T, 18) actions, got {action.shape}")
    obj, target = _hand_nouns(task)
    text = {key: template.format(obj=obj, target=target) for key, template in HAND.items()}
    length = len(action)
    fingers = action[:, HAND_FINGERS].astype(np.float64).mean(axis=1)
    closing = gripper_runs(fingers, +1, HAND_MIN_CHANGE)
    opening = gripper_runs(fingers, -1, HAND_MIN_CHANGE)
    velocity = np.zeros((length, 3))
    velocity[1:] = np.diff(action[:, :3].astype(np.float64), axis=0)
    horizontal = np.linalg.norm(velocity[:, HAND_WRIST_XY], axis=1)
    vertical = velocity[:, HAND_WRIST_Z]
    # the vertical descent that ends where the fingers start closing (or the wrist stops)
    if closing:
        descent_end = closing[0].start + 1
    else:
        moving = np.nonzero(horizontal + np.abs(vertical))[0]
        descent_end = int(moving[-1]) + 1 if len(moving) else 0
    lower_at = descent_end
    while (
        lower_at > 1
        and vertical[lower_at - 1] < 0
        and horizontal[lower_at - 1] <= HAND_VERTICAL * abs(vertical[lower_at - 1])
    ):
        lower_at -= 1
    cuts = [(0, text["reach"])]
    if lower_at < descent_end:
        cuts.append((lower_at, text["lower"]))
    if not closing:
        return fill_labels(length, cuts)
    close_at, closed_at = descent_end, closing[0].end + 1
    cuts += [(close_at, text["close"]), (closed_at, text["lift"])]
    carry = np.nonzero(horizontal[closed_at:] > np.abs(vertical[closed_at:]))[0]
    if len(carry):
        carry_at = closed_at + int(carry[0])
        cuts.append((carry_at, text["carry"]))
        place = np.nonzero(-vertical[carry_at:] > horizontal[carry_at:])[0]
        if len(place):
            cuts.append((carry_at + int(place[0]), text["place"]))
    release = next((run for run in opening if run.start >= closed_at - 1), None)
    if release is not None:
        cuts += [(release.start + 1, text["open"]), (release.end + 1, text["away"])]
    return fill_labels(length, cuts)
