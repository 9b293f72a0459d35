"""Automatic sub-step labels for datasets that have none, from the robot's own signals.

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

Sawyer (MetaWorld) episodes are cut by reading the shipped scripted policies' commands back:
each commands gain * (target - hand), with the target a fixed offset from the object while it
approaches, so the xyz action gives the hand-to-object offset. The expert's own rules
(`dexvla.sim.sawyer.SawyerScriptedExpert`) then apply to that estimate: move the hand until it
is within 3 cm of the object in xy, lower it, grasp while the gripper closes (a fixed number of
frames after the grip command turns on), then manipulate. Tasks whose approach command
saturates (the offset cannot be read) raise a `ValueError` naming the task.

Hand episodes (`dexvla.sim.hand`) are cut at the finger closing and opening runs (the mean
finger command) and at the wrist's change of motion direction: the descent before the grasp is
vertical, the carry horizontal, the placing descent vertical again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KNEE = 0.75
KNEE_WINDOW = 10
NOISE_FRACTION = 0.15
SLOW_FRACTION = 0.4
STILL_FRACTION = 0.03
GRIPPER_STEP = 1e-3
GRIPPER_MIN_CHANGE = 0.2
SYNC_FRAMES = 10
SMOOTH_FRAMES = 5
OBJECT_NOUNS = (
    "cube", "peg", "socket", "block", "box", "ball", "cup", "bottle", "sleeve", "shirt",
    "towel", "lid", "can", "bowl", "plate", "spoon", "pen", "puck",
)  # fmt: skip

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


def objects_from_task(task: str) -> tuple[str, str]:
    """(inserted/held object, receptacle) nouns from an instruction; "object" if none known."""
    match = re.search(r"insert the (\w+) into the (\w+)", task)
    if match:
        return match.group(1), match.group(2)
    found = [w for w in re.findall(r"[a-z]+", task.lower()) if w in OBJECT_NOUNS]
    first = found[0] if found else "object"
    return first, found[1] if len(found) > 1 else first


def _first_grasp(closing: list[Run], opening: list[Run]) -> Run | None:
    """The first closing run that follows an opening (a grasp, not a closed start)."""
    opened_at = opening[0].end if opening else 0
    return next((run for run in closing if run.start >= opened_at - 1), None)


def _open_end_before(opening: list[Run], t: int) -> int | None:
    ends = [run.end for run in opening if run.end <= t]
    return ends[-1] if ends else None


def _fill(length: int, cuts: Sequence[tuple[int, str]]) -> list[str]:
    """Labels from (start, label) cuts; later cuts win where boundaries cross."""
    labels = [cuts[0][1]] * length
    for start, label in cuts:
        for t in range(max(0, start), length):
            labels[t] = label
    return labels


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
    return _fill(length, cuts)


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
    return _fill(length, cuts)


@dataclass(frozen=True)
class SawyerCommand:
    """How a MetaWorld scripted policy (`metaworld.policies`) commands the hand to the object.

    The xyz action is `gain` * (target - hand), clipped to [-1, 1]. The target is the object
    plus `aim` once the policy descends, which it does once its xy error (command / gain) is
    within `descend_xy`; before that it hovers `hover` above the object. `close_frames`: frames
    from the grip command turning on until the expert sees the fingers closed (None: no grasp).
    """

    gain: float
    aim: tuple[float, float, float]
    hover: float
    descend_xy: float
    close_frames: int | None


SAWYER_COMMANDS = {
    "pick-place": SawyerCommand(10.0, (-0.005, 0.0, 0.03), 0.1, 0.02, 8),
    "push": SawyerCommand(10.0, (-0.005, 0.0, 0.03), 0.2, 0.02, 10),
    "drawer-open": SawyerCommand(4.0, (0.0, 0.0, -0.02), 0.28, 0.06, None),
}
SAWYER_UNREADABLE = {
    "button-press": "its y command stays saturated until the press",
    "window-open": "its z command stays saturated until the grasp",
}
SAWYER_OVER_XY = 0.03  # the expert's "over the object" xy distance
SAWYER_GRASP_RADIUS = 0.05  # the expert grasps within this hand-object distance

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


def _sawyer_task(task: str) -> tuple[str, str | None, str, float]:
    """(MetaWorld name, noun, manipulate text, contact radius) of the registered Sawyer task
    whose instruction is `task`; ValueError, naming the task, if its sub-steps are not
    readable from its actions."""
    from dexvla.sim.registry import TASKS
    from dexvla.sim.tasks import SAWYER_FEATURED, SAWYER_NAMED

    wording = {
        spec[0]: (name, *spec[1:]) for name, spec in (SAWYER_FEATURED | SAWYER_NAMED).items()
    }
    if task in wording:
        mw_name, noun, manipulate, radius = wording[task]
        if noun is None or mw_name in SAWYER_COMMANDS:
            return mw_name, noun, manipulate, radius
    else:
        mw_name = task.strip().replace(" ", "-")
    name = f"sawyer-{mw_name}"
    if name in TASKS and TASKS[name].instruction == task:
        why = SAWYER_UNREADABLE.get(mw_name, "its scripted policy's commands are not modelled")
    else:
        name, why = "an unregistered Sawyer task", "no registered task has this instruction"
    readable = ", ".join(f"sawyer-{n}" for n in sorted([*SAWYER_COMMANDS, "reach"]))
    raise ValueError(f"no sub-step annotation for {name} ({task!r}): {why}; supported: {readable}")


def annotate_sawyer(action: np.ndarray, task: str) -> list[str]:
    """Per-frame sub-step text for one MetaWorld Sawyer episode's (T, 4) actions."""
    if action.ndim != 2 or action.shape[1] != 4:
        raise ValueError(f"annotate_sawyer: expected (T, 4) actions, got {action.shape}")
    mw_name, noun, manipulate, radius = _sawyer_task(task)
    if noun is None:  # no object (reach): the expert has one sub-step
        return [manipulate] * len(action)
    command = SAWYER_COMMANDS[mw_name]
    step = action[:, :3].astype(np.float64) / command.gain
    offset = step - np.asarray(command.aim)  # object - hand
    hovering = np.linalg.norm(step[:, :2], axis=1) > command.descend_xy
    offset[hovering, 2] = step[hovering, 2] - command.hover
    grab = action[:, 3] > 0
    labels: list[str] = []
    onset, grasping, engaged = 0, False, False
    for t in range(len(action)):
        if grab[t] and (t == 0 or not grab[t - 1]):
            onset = t
        distance = float(np.linalg.norm(offset[t]))
        can_grasp = command.close_frames is not None and grab[t] and not engaged
        if can_grasp and (grasping or distance < SAWYER_GRASP_RADIUS):
            grasping = True
            engaged = t >= onset + command.close_frames
            labels.append(f"grasp the {noun}")
        elif engaged or distance < radius:
            engaged = True
            labels.append(manipulate)
        elif np.linalg.norm(offset[t, :2]) > SAWYER_OVER_XY:
            labels.append(f"move the hand to the {noun}")
        else:
            labels.append(f"lower the hand to the {noun}")
    return labels


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
        return _fill(length, cuts)
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
    return _fill(length, cuts)


ANNOTATORS = {"aloha": annotate_aloha, "sawyer": annotate_sawyer, "hand": annotate_hand}


def annotate_episode(embodiment: str, action: np.ndarray, task: str) -> list[str]:
    """Sub-steps for one episode of `embodiment`; KeyError if it has no templates."""
    try:
        annotator = ANNOTATORS[embodiment]
    except KeyError:
        raise KeyError(
            f"no sub-step templates for embodiment {embodiment!r}; have {sorted(ANNOTATORS)}"
        ) from None
    return annotator(np.asarray(action), task)


def agreement(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """Fraction of frames whose labels match exactly."""
    if len(predicted) != len(truth) or not truth:
        raise ValueError(f"agreement: {len(predicted)} predicted vs {len(truth)} true labels")
    return float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))


def annotate_dataset(
    path: Path, *, overwrite: bool = False, evaluate: bool = False
) -> dict[str, Any]:
    """Label every episode of a LeRobot v3 or ACT HDF5 directory.

    Episodes that already carry sub-steps are left alone unless `overwrite`. With `evaluate`,
    nothing is written: the labels are compared with the episodes' existing sub-steps
    (frame-level exact-match agreement, per episode and mean).
    """
    from dexvla.data import act_hdf5, lerobot_v3
    from dexvla.data.sources import open_dataset

    dataset = open_dataset(path)
    labels: dict[int, list[str]] = {}
    scores: list[float] = []
    skipped = 0
    for i in range(dataset.num_episodes):
        low = dataset.lowdim(i)
        has_labels = any(low["substeps"])
        predicted = annotate_episode(dataset.embodiment, low["action"], low["task"])
        if evaluate:
            if has_labels:
                scores.append(agreement(predicted, low["substeps"]))
        elif has_labels and not overwrite:
            skipped += 1
        else:
            labels[i] = predicted
    if isinstance(dataset, act_hdf5.ActHdf5Dataset):
        for i, substeps in labels.items():
            act_hdf5.write_substeps(dataset.paths[i], substeps)
    elif labels:
        lerobot_v3.write_substeps(Path(path), labels)
    result: dict[str, Any] = {
        "episodes": dataset.num_episodes,
        "annotated": len(labels),
        "skipped": skipped,
    }
    if evaluate:
        result["agreement_per_episode"] = scores
        result["agreement"] = float(np.mean(scores)) if scores else None
    return result


def evaluate_on_sim(task_name: str, seeds: Sequence[int], *, image_size: int = 16) -> dict:
    """Collect scripted demonstrations with `dexvla.sim` and score the annotator against the
    expert's ground-truth sub-steps (frame-level exact match). A Sawyer task whose sub-steps
    cannot be read from its actions fails before any rollout."""
    from dexvla.sim import collect_episode, get_task

    spec = get_task(task_name)
    if spec.embodiment == "sawyer":
        _sawyer_task(spec.instruction)
    scores = []
    for seed in seeds:
        episode = collect_episode(task_name, seed, image_size=image_size)
        predicted = annotate_episode(episode.embodiment, episode.action, episode.task)
        scores.append(agreement(predicted, episode.substeps))
    return {
        "task": task_name,
        "seeds": list(seeds),
        "agreement_per_episode": scores,
        "agreement": float(np.mean(scores)),
        "min": float(np.min(scores)),
    }
