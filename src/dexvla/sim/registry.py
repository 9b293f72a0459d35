"""The simulated tasks: one registry of names, environments and scripted experts.

Every task is a `TaskSpec`; `make_env` builds its gymnasium environment with the dexvla
observation layout (`image_key(cam)` for each camera of the embodiment and `STATE`, from
`dexvla.schema`) and `make_expert` its scripted expert. Running them is `dexvla.sim.rollout`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import gymnasium as gym
import numpy as np

from dexvla.embodiments import get_embodiment

ImageSize = int | tuple[int, int]


class ScriptedExpert(Protocol):
    """A scripted demonstrator that can also run as a closed-loop policy.

    `reset(env)` is called after `env.reset(seed=...)` and may read the environment's internals
    (object poses); `act(obs)` returns the action and the current sub-step text.
    """

    def reset(self, env: gym.Env) -> None: ...

    def act(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, str]: ...


@dataclass(frozen=True)
class TaskSpec:
    """One simulated task. `fps` is its control rate; `max_steps` its episode limit.

    `post_success_steps`: frames still recorded after the task first succeeds, so a
    demonstration shows the settled end state. `featured` tasks are the default set that tests
    and documentation cover (all 50 MetaWorld tasks are registered, five are featured).
    """

    name: str
    embodiment: str
    instruction: str
    max_steps: int
    fps: int
    suite: str
    env_factory: Callable[..., gym.Env] = field(repr=False, compare=False)
    expert_factory: Callable[[], ScriptedExpert] = field(repr=False, compare=False)
    description: str = ""
    post_success_steps: int = 10
    featured: bool = True

    def as_dict(self) -> dict:
        """What `dexvla tasks --json` prints for this task."""
        spec = get_embodiment(self.embodiment)
        return {
            "name": self.name,
            "embodiment": self.embodiment,
            "suite": self.suite,
            "instruction": self.instruction,
            "action_dim": spec.action_dim,
            "state_dim": spec.state_dim,
            "cameras": list(spec.cameras),
            "max_steps": self.max_steps,
            "fps": self.fps,
            "featured": self.featured,
            "description": self.description,
        }


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task; names are unique, and the embodiment must be registered."""
    get_embodiment(spec.embodiment)
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    TASKS[spec.name] = spec
    return spec


def list_tasks(*, featured_only: bool = False) -> list[TaskSpec]:
    """All registered tasks (or only the featured ones), sorted by name."""
    return [t for _, t in sorted(TASKS.items()) if t.featured or not featured_only]


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, with an error that lists the featured tasks."""
    try:
        return TASKS[name]
    except KeyError:
        known = ", ".join(t.name for t in list_tasks(featured_only=True))
        raise KeyError(
            f"unknown task {name!r}; known tasks: {known} "
            f"(and sawyer-<metaworld name>; `dexvla tasks` lists all)"
        ) from None


def parse_image_size(size: ImageSize | str) -> tuple[int, int]:
    """128, (96, 128) or "96x128" (height x width) -> (height, width)."""
    if isinstance(size, str):
        parts = size.lower().split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"image size must be N or HxW, got {size!r}") from None
        size = values[0] if len(values) == 1 else tuple(values)
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image size must be positive (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def make_env(
    task_name: str, *, image_size: ImageSize = 128, seed: int | None = None, render: bool = True
) -> gym.Env:
    """Build a task's environment; with `seed`, unseeded resets draw deterministic seeds.

    `render=False` leaves the cameras out of the observation (state only), for fast checks of
    the scripted experts.
    """
    spec = get_task(task_name)
    env = spec.env_factory(
        instruction=spec.instruction,
        image_size=parse_image_size(image_size),
        max_steps=spec.max_steps,
        render=render,
    )
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def task_camera_fovy(task_name: str) -> dict[str, float]:
    """The task's cameras' vertical fields of view (degrees), from its model (no rendering)."""
    env = make_env(task_name, render=False)
    try:
        return dict(env.unwrapped.camera_fovy)
    finally:
        env.close()


def make_expert(task_name: str) -> ScriptedExpert:
    """A fresh scripted expert for the task."""
    return get_task(task_name).expert_factory()
