"""ALOHA sub-steps from the 14-D actions.

Each episode is cut into phases at events read off the actions: gripper opening and closing
runs (the gripper channels), the end of an arm's motion (where its joint speed leaves its last
plateau and decays, `_motion_end`), and the drop from fast transport to slow fine motion
(speed below `SLOW_FRACTION` of the transport peak), then stillness (below `STILL_FRACTION`).
Two phase grammars cover ALOHA bimanual tasks:

* hand-over (the arms grasp one after the other): reach, lower, grasp with the first arm,
  carry, bring the second gripper, grasp with it, release from the first, hold;
* bimanual (both grasp together): reach, lower both, grasp both, lift and bring together,
  insert, hold.

Each phase is named by a sentence template filled with the arm and the object nouns of the
instruction. The templates use the same wording as the project's scripted ALOHA experts
(`dexvla.sim.aloha`), so agreement is measured by exact string match. For the bimanual grammar
the right arm is taken to hold the inserted object and the left the receptacle ("insert the X
into the Y"), as in ALOHA insertion.
"""

from __future__ import annotations

import numpy as np

from dexvla.annotate.events import Run, fill_labels, gripper_runs, objects_from_task

KNEE = 0.75
KNEE_WINDOW = 10
NOISE_FRACTION = 0.15
SLOW_FRACTION = 0.4
STILL_FRACTION = 0.03
SYNC_FRAMES = 10
SMOOTH_FRAMES = 5

# ALOHA joint layout (14-D qpos/action): 0-5 left arm, 6 left gripper, 7-12 right, 13 right.
ALOHA_ARMS = {"left": (slice(0, 6), 6), "right": (slice(7, 13), 13)}

HANDOVER = {
    "reach": "reach above the {obj} with the {first} arm",
    "lower": "lower the {first} gripper to the {obj}",
    "grasp_first": "grasp the {obj} with the {first} gripper",
    "carry": "lift the {obj} and carry it to the middle",
    "bring": "bring the {second} gripper to the {obj}",
    "grasp_second": "grasp the {obj} with the {second} gripper",
    "release": "release the {obj} from the {first} gripper",
    "hold": "hold the {obj} with the {second} arm",
}
BIMANUAL = {
    "reach": "reach above the {left_obj} with the left arm and the {right_obj} with the right arm",
    "lower": "lower both grippers",
    "grasp": "grasp the {left_obj} and the {right_obj}",
    "lift": "lift both and bring them together",
    "insert": "insert the {right_obj} into the {left_obj}",
    "hold": "hold the {right_obj} in the {left_obj}",
}


def _speed(joints: np.ndarray) -> np.ndarray:
    """Smoothed joint-space speed per frame (the first step, a reset jump, is ignored)."""
    speed = np.zeros(len(joints))
    if len(joints) > 1:
        speed[1:] = np.linalg.norm(np.diff(joints, axis=0), axis=1)
        speed[1] = speed[2] if len(joints) > 2 else 0.0
    kernel = np.ones(SMOOTH_FRAMES) / SMOOTH_FRAMES
    return np.convolve(speed, kernel, mode="same")


def _motion_end(speed: np.ndarray, start: int, stop: int) -> int:
    """The frame where an arm's last motion in [start, stop) ends: scanning back from `stop`,
    the last frame whose speed is still at its plateau (>= `KNEE` of the max over the previous
    `KNEE_WINDOW` frames) rather than in the decaying tail, and not noise (>= `NOISE_FRACTION`
    of the median speed since `start`)."""
    for t in range(min(stop, len(speed)) - 1, start + KNEE_WINDOW, -1):
        plateau = speed[t - KNEE_WINDOW : t + 1].max()
        moving = speed[t] >= NOISE_FRACTION * np.median(speed[start : t + 1])
        if moving and speed[t] >= KNEE * plateau:
            return t + 1
    return start


def _first_grasp(closing: list[Run], opening: list[Run]) -> Run | None:
    """The first closing run that follows an opening (a grasp, not a closed start)."""
    opened_at = opening[0].end if opening else 0
    return next((run for run in closing if run.start >= opened_at - 1), None)


def _open_end_before(opening: list[Run], t: int) -> int | None:
    ends = [run.end for run in opening if run.end <= t]
    return ends[-1] if ends else None


def annotate_aloha(action: np.ndarray, task: str) -> list[str]:
    """Per-frame sub-step text for one ALOHA episode's (T, 14) actions."""
    if action.ndim != 2 or action.shape[1] != 14:
        raise ValueError(f"annotate_aloha: expected (T, 14) actions, got {action.shape}")
    length = len(action)
    arms = {}
    for name, (joints, gripper) in ALOHA_ARMS.items():
        g = action[:, gripper].astype(np.float64)
        opening, closing = gripper_runs(g, +1), gripper_runs(g, -1)
        arms[name] = {
            "joints": action[:, joints].astype(np.float64),
            "opening": opening,
            "closing": closing,
            "grasp": _first_grasp(closing, opening),
        }
    held, receptacle = objects_from_task(task)
    grasps = {name: arm["grasp"] for name, arm in arms.items() if arm["grasp"] is not None}
    if not grasps:
        return [HANDOVER["reach"].format(obj=held, first="right")] * length
    ordered = sorted(grasps, key=lambda name: grasps[name].start)
    both = len(ordered) == 2 and abs(grasps["left"].start - grasps["right"].start) <= SYNC_FRAMES
    if both:
        return _bimanual(arms, length, left_obj=receptacle, right_obj=held)
    return _handover(arms, length, ordered[0], held)


def _handover(arms: dict, length: int, first: str, obj: str) -> list[str]:
    second = "left" if first == "right" else "right"
    words = {"obj": obj, "first": first, "second": second}
    text = {key: template.format(**words) for key, template in HANDOVER.items()}
    a, b = arms[first], arms[second]
    grasp = a["grasp"]
    opened = _open_end_before(a["opening"], grasp.start)
    lower_at = opened if opened is not None else (2 * grasp.start) // 3
    cuts = [(0, text["reach"]), (lower_at, text["lower"]), (grasp.start, text["grasp_first"])]
    cuts.append((grasp.end, text["carry"]))
    second_grasp = next((r for r in b["closing"] if r.start >= grasp.end), None)
    wait_until = second_grasp.start if second_grasp else length - 1
    cuts.append((_motion_end(_speed(a["joints"]), grasp.end, wait_until), text["bring"]))
    if second_grasp is not None:
        cuts.append((second_grasp.start, text["grasp_second"]))
        if second_grasp.end < length - 1:  # a run cut by the episode's end is unfinished
            cuts.append((second_grasp.end, text["release"]))
        release = next((r for r in a["opening"] if r.start >= second_grasp.start), None)
        if release is not None:
            cuts.append((release.end, text["hold"]))
    return fill_labels(length, cuts)


def _bimanual(arms: dict, length: int, *, left_obj: str, right_obj: str) -> list[str]:
    text = {
        key: template.format(left_obj=left_obj, right_obj=right_obj)
        for key, template in BIMANUAL.items()
    }
    starts = [arm["grasp"].start for arm in arms.values()]
    ends = [arm["grasp"].end for arm in arms.values()]
    opened = [_open_end_before(arm["opening"], arm["grasp"].start) for arm in arms.values()]
    lower_at = max(o for o in opened if o is not None) if any(opened) else (2 * min(starts)) // 3
    grasp_end = max(ends)
    cuts = [(0, text["reach"]), (lower_at, text["lower"]), (min(starts), text["grasp"])]
    cuts.append((grasp_end, text["lift"]))
    speed = sum(_speed(arm["joints"]) for arm in arms.values())
    if grasp_end < length - 1:
        peak_at = grasp_end + int(np.argmax(speed[grasp_end:]))
        peak = speed[peak_at]
        slow = np.nonzero(speed[peak_at:] < SLOW_FRACTION * peak)[0]
        if len(slow):
            insert_at = peak_at + int(slow[0])
            cuts.append((insert_at, text["insert"]))
            moving = np.nonzero(speed[insert_at:] >= STILL_FRACTION * peak)[0]
            still_at = insert_at + (int(moving[-1]) + 1 if len(moving) else 0)
            if still_at < length - SMOOTH_FRAMES:
                cuts.append((still_at, text["hold"]))
    return fill_labels(length, cuts)
