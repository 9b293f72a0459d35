"""The ALOHA environment: gym-aloha's joint-space models stepped with raw `mujoco`.

gym-aloha's own gym wrapper renders three 640x480 cameras with shadows every step (~365 ms);
here three small cameras without shadows cost ~30 ms.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import ClassVar

import gym_aloha
import gymnasium as gym
import mujoco
import numpy as np
from gym_aloha.constants import (
    PUPPET_GRIPPER_POSITION_CLOSE,
    PUPPET_GRIPPER_POSITION_OPEN,
    START_ARM_POSE,
)

from dexvla.schema import ENV_STATE, STATE
from dexvla.sim.aloha.scenes import AlohaScene, apply_layout
from dexvla.sim.render import CameraRenderer, camera_fovy, observation_space

ALOHA_ASSETS = Path(gym_aloha.__file__).parent / "assets"
LOCAL_ASSETS = Path(__file__).parents[1] / "assets"
CONTROL_DT = 0.02
ALOHA_CAMERAS = {
    "cam_high": "top",
    "cam_left_wrist": "left_wrist",
    "cam_right_wrist": "right_wrist",
}
# gym-aloha's top camera has a 78 degree field of view, made for 640x480 images: at 84 px the
# 4 cm cube covers about 9 pixels. 50 degrees keeps the table and both grippers in view and gives
# the cube 25-35 pixels (docs/simulation.md).
TOP_CAMERA_FOVY = 50.0


def unnormalize_gripper(value: float) -> float:
    """Normalised gripper command (0 closed, 1 open) -> finger position in metres."""
    span = PUPPET_GRIPPER_POSITION_OPEN - PUPPET_GRIPPER_POSITION_CLOSE
    return value * span + PUPPET_GRIPPER_POSITION_CLOSE


def normalize_gripper(position: float) -> float:
    """Finger position in metres -> normalised gripper opening (0 closed, 1 open)."""
    span = PUPPET_GRIPPER_POSITION_OPEN - PUPPET_GRIPPER_POSITION_CLOSE
    return (position - PUPPET_GRIPPER_POSITION_CLOSE) / span


@cache
def _aloha_asset_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in ALOHA_ASSETS.iterdir() if p.is_file()}


def load_aloha_model(xml_name: str, extra_xml: str | None = None) -> mujoco.MjModel:
    """Load one of gym-aloha's models, with an optional fragment of ours added to its world."""
    text = (ALOHA_ASSETS / xml_name).read_text()
    if extra_xml:
        fragment = (LOCAL_ASSETS / extra_xml).read_text()
        head, sep, tail = text.rpartition("</worldbody>")
        text = head + fragment + sep + tail
    return mujoco.MjModel.from_xml_string(text, _aloha_asset_files())


def reset_arms(data: mujoco.MjData) -> None:
    """Both arms (and their fingers) to gym-aloha's start pose."""
    data.qpos[:16] = START_ARM_POSE


class AlohaEnv(gym.Env):
    """Joint-position-controlled ALOHA with three cameras and a staged reward.

    Action (14,): per arm 6 joint targets (rad) + gripper opening (0 closed, 1 open), left arm
    first. Observation: the three embodiment cameras, `observation.state` (14,) in the same
    layout, and `ENV_STATE` (3 per object): the world xyz (metres) of each free-joint object of
    the scene's layout, in sorted joint-name order (privileged; for diagnostics). `info`:
    `is_success`, `reward_stage` (0..max_reward) and `max_reward`.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        scene: AlohaScene,
        *,
        instruction: str,
        image_size: tuple[int, int] = (128, 128),
        max_steps: int = 400,
        render: bool = True,
    ) -> None:
        self.scene = scene
        self.task_instruction = instruction
        self.max_steps = max_steps
        self.model = load_aloha_model(scene.joint_xml, scene.extra_xml)
        self.data = mujoco.MjData(self.model)
        self.n_substeps = round(CONTROL_DT / self.model.opt.timestep)
        self.model.cam_fovy[self.model.camera(ALOHA_CAMERAS["cam_high"]).id] = TOP_CAMERA_FOVY
        self.camera_fovy = camera_fovy(self.model, ALOHA_CAMERAS)
        self.renderer = CameraRenderer(self.model, ALOHA_CAMERAS, image_size) if render else None
        # The free-joint objects a layout places (every layout of a scene names the same ones),
        # sorted, and where each one's 7 qpos values (xyz, quaternion) start.
        self.object_joints = sorted(k for k in scene.sample_layout(0) if not k.startswith("body:"))
        self._object_qpos = [
            self.model.jnt_qposadr[self.model.joint(j).id] for j in self.object_joints
        ]
        self.observation_space = observation_space(
            ALOHA_CAMERAS if render else (), image_size, 14, 3 * len(self.object_joints)
        )
        self.action_space = gym.spaces.Box(-np.pi, np.pi, (14,), np.float32)
        self.layout: dict[str, np.ndarray] = {}
        self.steps = 0

    def _state(self) -> np.ndarray:
        q = self.data.qpos
        return np.concatenate(
            [q[:6], [normalize_gripper(q[6])], q[8:14], [normalize_gripper(q[14])]]
        ).astype(np.float32)

    def _object_positions(self) -> np.ndarray:
        """float32 (3 * objects,): each object's world xyz (metres), in `object_joints` order."""
        q = self.data.qpos
        return np.concatenate([q[a : a + 3] for a in self._object_qpos]).astype(np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        obs = self.renderer.render(self.data) if self.renderer else {}
        obs[STATE] = self._state()
        obs[ENV_STATE] = self._object_positions()
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31))
        self.layout = self.scene.sample_layout(seed)
        mujoco.mj_resetData(self.model, self.data)
        reset_arms(self.data)
        self.data.ctrl[:] = START_ARM_POSE
        apply_layout(self.model, self.data, self.layout)
        mujoco.mj_forward(self.model, self.data)
        self.steps = 0
        return self._obs(), {"is_success": False, "reward_stage": 0, "seed": seed}

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (14,):
            raise ValueError(f"ALOHA action must have shape (14,), got {action.shape}")
        left_g, right_g = unnormalize_gripper(action[6]), unnormalize_gripper(action[13])
        self.data.ctrl[:] = np.concatenate(
            [action[:6], [left_g, -left_g], action[7:13], [right_g, -right_g]]
        )
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self.steps += 1
        stage = self.scene.reward(self.model, self.data, self.layout)
        success = stage == self.scene.max_reward
        info = {
            "is_success": success,
            "reward_stage": stage,
            "stage_name": self.scene.stage_names[stage],
            "max_reward": self.scene.max_reward,
        }
        truncated = self.steps >= self.max_steps
        return self._obs(), float(stage), success, truncated, info

    def close(self) -> None:
        if self.renderer:
            self.renderer.close()
