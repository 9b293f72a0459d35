"""MetaWorld Sawyer sub-steps from the 4-D actions.

Episodes are cut by reading the shipped scripted policies' commands back: each commands
gain * (target - hand), with the target a fixed offset from the object while it approaches,
so the xyz action gives the hand-to-object offset. The expert's own rules
(`dexvla.sim.sawyer.SawyerScriptedExpert`) then apply to that estimate: move the hand until it
is within 3 cm of the object in xy, lower it, grasp while the gripper closes (a fixed number of
frames after the grip command turns on), then manipulate. Tasks whose approach command
saturates (the offset cannot be read) raise a `ValueError` naming the task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def sawyer_task(task: str) -> tuple[str, str | None, str, float]:
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
    mw_name, noun, manipulate, radius = sawyer_task(task)
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
