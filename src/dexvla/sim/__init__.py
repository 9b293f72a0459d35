"""Simulated robots and tasks (ALOHA, MetaWorld Sawyer, a dexterous hand), scripted experts
with per-frame sub-steps, the one rollout loop and demonstration collection.

`registry` names the tasks, `tasks` registers them, `rollout` runs episodes, `collect` records
datasets; `aloha`, `sawyer` and `hand` are the simulators. See docs/simulation.md."""

import os

# Offscreen rendering on a headless machine unless the user chose a backend; must be set
# before mujoco is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from dexvla.sim import tasks as _tasks  # noqa: F401  (registers the tasks)
from dexvla.sim.registry import (
    ScriptedExpert,
    TaskSpec,
    get_task,
    list_tasks,
    make_env,
    make_expert,
    parse_image_size,
    register_task,
    task_camera_fovy,
)
from dexvla.sim.rollout import (
    EpisodePolicy,
    ExpertPolicy,
    Rollout,
    collect_episode,
    expert_succeeds,
    roll_out,
    run_expert,
)

__all__ = [
    "EpisodePolicy",
    "ExpertPolicy",
    "Rollout",
    "ScriptedExpert",
    "TaskSpec",
    "collect_episode",
    "expert_succeeds",
    "get_task",
    "list_tasks",
    "make_env",
    "make_expert",
    "parse_image_size",
    "register_task",
    "roll_out",
    "run_expert",
    "task_camera_fovy",
]
