"""MetaWorld Sawyer tasks with one camera, and MetaWorld's scripted policies as experts.

MetaWorld's goal-observable environments are used with their own seeded randomisation: a reset
with seed `s` re-seeds the environment's RNG, so object and goal positions are a function of `s`.
The policies ship no phase names; the expert derives its sub-step from what the policy does:
whether the hand is still away from the object, the gripper is closing on it, or it moves the
object toward the goal.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cache
from typing import ClassVar

import gymnasium as gym
import metaworld.policies as mw_policies
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

from dexvla.schema import STATE
from dexvla.sim.render import CameraRenderer, camera_fovy, observation_space

SAWYER_CAMERAS = {"cam_high": "corner2"}  # embodiment camera -> MetaWorld camera
MAX_PATH_LENGTH = 500  # MetaWorld refuses to step past this


def metaworld_names() -> list[str]:
    """All MetaWorld v3 task names without the version suffix (e.g. "pick-place")."""
    return sorted(name.removesuffix("-v3") for name in ALL_V3_ENVIRONMENTS)


@cache
def _policy_class(name: str) -> type:
    class_name = "Sawyer" + "".join(part.capitalize() for part in name.split("-")) + "V3Policy"
    try:
        return getattr(mw_policies, class_name)
    except AttributeError:
        raise KeyError(f"MetaWorld ships no scripted policy {class_name} for {name!r}") from None


class SawyerEnv(gym.Env):
    """A MetaWorld task with the dexvla observation layout.

    Action (4,): end-effector xyz delta and gripper effort, each in [-1, 1]. Observation: one
    camera `observation.images.cam_high` and `observation.state` (4,) = hand xyz + gripper
    opening. The full MetaWorld observation vector is kept in `info["mw_obs"]` for the expert.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        mw_name: str,
        *,
        instruction: str,
        image_size: tuple[int, int] = (128, 128),
        max_steps: int = 200,
        render: bool = True,
    ) -> None:
        key = f"{mw_name}-v3-goal-observable"
        if key not in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE:
            raise KeyError(f"unknown MetaWorld task {mw_name!r}; known: {metaworld_names()}")
        if max_steps > MAX_PATH_LENGTH:
            raise ValueError(f"max_steps must be <= {MAX_PATH_LENGTH} for MetaWorld")
        self.mw_name = mw_name
        self.task_instruction = instruction
        self.max_steps = max_steps
        self.mw_env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[key]()
        self.mw_env.seeded_rand_vec = True
        self.camera_fovy = camera_fovy(self.mw_env.model, SAWYER_CAMERAS)
        self.renderer = (
            CameraRenderer(self.mw_env.model, SAWYER_CAMERAS, image_size) if render else None
        )
        self.observation_space = observation_space(SAWYER_CAMERAS if render else (), image_size, 4)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.mw_obs = np.zeros(39)
        self.steps = 0

    def _obs(self) -> dict[str, np.ndarray]:
        obs = self.renderer.render(self.mw_env.data) if self.renderer else {}
        obs[STATE] = self.mw_obs[:4].astype(np.float32)
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31))
        self.mw_env._freeze_rand_vec = False
        self.mw_env.seed(seed)
        self.mw_obs, _ = self.mw_env.reset()
        self.steps = 0
        return self._obs(), {"is_success": False, "reward_stage": 0, "seed": seed}

    def step(self, action: np.ndarray):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if action.shape != (4,):
            raise ValueError(f"Sawyer action must have shape (4,), got {action.shape}")
        self.mw_obs, reward, _, _, mw_info = self.mw_env.step(action)
        self.steps += 1
        success = bool(mw_info.get("success", 0.0))
        info = {
            "is_success": success,
            "reward_stage": int(success),
            "max_reward": 1,
            "mw_obs": self.mw_obs,
        }
        return self._obs(), float(reward), success, self.steps >= self.max_steps, info

    def close(self) -> None:
        if self.renderer:
            self.renderer.close()
        self.mw_env.close()


@dataclass
class SawyerScriptedExpert:
    """MetaWorld's scripted policy, with a sub-step derived from its behaviour.

    `noun` names the object ("puck"); `manipulate` is what the hand does once it holds or touches
    it ("carry the puck to the goal"), from when the hand is within `contact_radius` of the
    object's reported position. With no object (reach), every step is `manipulate`.
    """

    mw_name: str
    noun: str | None
    manipulate: str
    contact_radius: float = 0.05
    _policy: object = field(init=False, repr=False)
    _env: SawyerEnv | None = field(default=None, init=False, repr=False)
    _closed_on_object: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._policy = _policy_class(self.mw_name)()

    def reset(self, env: gym.Env) -> None:
        self._env = env.unwrapped
        self._closed_on_object = False

    def act(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
        if self._env is None:
            raise RuntimeError("call reset(env) before act()")
        mw_obs = self._env.mw_obs
        with warnings.catch_warnings():  # the policies warn when they saturate the action
            warnings.simplefilter("ignore", UserWarning)
            action = np.asarray(self._policy.get_action(mw_obs), dtype=np.float32)
        return np.clip(action, -1.0, 1.0), self._substep(mw_obs, action)

    def _substep(self, mw_obs: np.ndarray, action: np.ndarray) -> str:
        if self.noun is None:
            return self.manipulate
        hand, obj = mw_obs[:3], mw_obs[4:7]
        near = np.linalg.norm(hand - obj) < self.contact_radius
        grabbing = action[3] > 0
        if grabbing and np.linalg.norm(hand - obj) < 0.05 and not self._closed_on_object:
            if mw_obs[3] < 0.75:  # fingers have closed on the object
                self._closed_on_object = True
            return f"grasp the {self.noun}"
        if near or self._closed_on_object:
            return self.manipulate
        if np.linalg.norm(hand[:2] - obj[:2]) > 0.03:
            return f"move the hand to the {self.noun}"
        return f"lower the hand to the {self.noun}"
