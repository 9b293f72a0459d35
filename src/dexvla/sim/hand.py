"""A dexterous hand on a 6-DoF wrist (sim/assets/hand_pick_place.xml) and its scripted expert.

No registry package ships a dexterous-hand task, so the model is the project's own: a Cartesian
wrist (three slides, three hinges) carrying a palm, three 3-joint fingers and a 3-joint opposing
thumb. Actions and state are the 18 joint positions (targets / measured), wrist first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import gymnasium as gym
import mujoco
import numpy as np

from dexvla.schema import STATE
from dexvla.sim.render import CameraRenderer, camera_fovy, observation_space

HAND_XML = Path(__file__).parent / "assets" / "hand_pick_place.xml"
HAND_CAMERAS = {"cam_high": "cam_high", "cam_wrist": "cam_wrist"}
CONTROL_DT = 0.04  # 25 Hz
WRIST_HEIGHT = 0.3  # the wrist body's height at wrist_z = 0
OBJECT_HALF_HEIGHT = 0.035
HAND_DOF = 12
ACTION_DIM = 18
TARGET_RADIUS = 0.035


def sample_layout(seed: int) -> dict[str, np.ndarray]:
    """The object and target positions of episode `seed` (the env and tests share it)."""
    rng = np.random.default_rng([seed, 11])
    return {
        "object": np.array([*rng.uniform([-0.12, -0.12], [0.12, -0.02]), OBJECT_HALF_HEIGHT]),
        "target": np.array([*rng.uniform([-0.12, 0.08], [0.12, 0.16]), 0.001]),
    }


class HandEnv(gym.Env):
    """Pick the red block up and place it on the green pad, with a 12-DoF hand.

    Action (18,): joint position targets (wrist x, y, z in m relative to the wrist home at
    (0, 0, 0.3); roll, pitch, yaw; then index, middle, ring mcp/pip/dip; thumb rot/mcp/ip in
    rad). Observation: cameras `cam_high`, `cam_wrist` and `observation.state` (18,) = joint
    positions. `info["reward_stage"]`: 0 none, 1 grasped, 2 lifted, 3 over the pad, 4 placed.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 25}
    max_reward = 4

    def __init__(
        self,
        *,
        instruction: str,
        image_size: tuple[int, int] = (128, 128),
        max_steps: int = 250,
        render: bool = True,
    ) -> None:
        self.task_instruction = instruction
        self.max_steps = max_steps
        self.model = mujoco.MjModel.from_xml_path(str(HAND_XML))
        self.data = mujoco.MjData(self.model)
        self.n_substeps = round(CONTROL_DT / self.model.opt.timestep)
        self.camera_fovy = camera_fovy(self.model, HAND_CAMERAS)
        self.renderer = CameraRenderer(self.model, HAND_CAMERAS, image_size) if render else None
        self._object_geom = self.model.geom("object").id
        self._table_geom = self.model.geom("table").id
        self._object_qpos = self.model.jnt_qposadr[self.model.joint("object_joint").id]
        self._target_site = self.model.site("target").id
        self._object_body = self.model.body("object").id
        self._hand_part = self._hand_parts()
        # qpos addresses of the actuated joints, in action order (the object's free joint
        # comes first in qpos)
        self._joint_qpos = self.model.jnt_qposadr[self.model.actuator_trnid[:, 0]]
        self.observation_space = observation_space(
            HAND_CAMERAS if render else (), image_size, ACTION_DIM
        )
        ctrl_range = self.model.actuator_ctrlrange
        self.action_space = gym.spaces.Box(
            ctrl_range[:, 0].astype(np.float32), ctrl_range[:, 1].astype(np.float32)
        )
        self.layout: dict[str, np.ndarray] = {}
        self.steps = 0
        self._was_lifted = False

    def _hand_parts(self) -> dict[int, str]:
        """Geom id -> the hand part it belongs to: "wrist" (palm) or a finger's name."""
        wrist = self.model.body("wrist").id
        parts = {}
        for geom in range(self.model.ngeom):
            body = self.model.geom_bodyid[geom]
            while body not in (0, wrist) and self.model.body_parentid[body] != wrist:
                body = self.model.body_parentid[body]
            if body != 0:
                parts[geom] = self.model.body(body).name
        return parts

    @property
    def object_pos(self) -> np.ndarray:
        return self.data.qpos[self._object_qpos : self._object_qpos + 3].copy()

    def _obs(self) -> dict[str, np.ndarray]:
        obs = self.renderer.render(self.data) if self.renderer else {}
        obs[STATE] = self.data.qpos[self._joint_qpos].astype(np.float32)
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31))
        self.layout = sample_layout(seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._object_qpos : self._object_qpos + 3] = self.layout["object"]
        self.model.site_pos[self._target_site] = self.layout["target"]
        mujoco.mj_forward(self.model, self.data)
        self.steps = 0
        self._was_lifted = False
        return self._obs(), {"is_success": False, "reward_stage": 0, "seed": seed}

    def _stage(self) -> int:
        object_touches_table = False
        parts: set[str] = set()
        for i in range(self.data.ncon):
            pair = {self.data.contact[i].geom1, self.data.contact[i].geom2}
            if self._object_geom not in pair:
                continue
            other = (pair - {self._object_geom}).pop()
            if other == self._table_geom:
                object_touches_table = True
            elif other in self._hand_part:
                parts.add(self._hand_part[other])
        pos = self.object_pos
        near_target = np.linalg.norm(pos[:2] - self.layout["target"][:2]) < TARGET_RADIUS
        lifted = bool(parts) and not object_touches_table and pos[2] > OBJECT_HALF_HEIGHT + 0.02
        self._was_lifted |= lifted
        upright = self.data.xmat[self._object_body][8] > 0.9
        if self._was_lifted and near_target and object_touches_table and upright and not parts:
            return 4
        if lifted and near_target:
            return 3
        if lifted:
            return 2
        return int("thumb" in parts and len(parts & {"index", "middle", "ring"}) >= 2)

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"hand action must have shape ({ACTION_DIM},), got {action.shape}")
        self.data.ctrl[:] = action
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self.steps += 1
        stage = self._stage()
        success = stage == self.max_reward
        info = {"is_success": success, "reward_stage": stage, "max_reward": self.max_reward}
        return self._obs(), float(stage), success, self.steps >= self.max_steps, info

    def close(self) -> None:
        if self.renderer:
            self.renderer.close()


OPEN_HAND = np.zeros(HAND_DOF)
RELEASE_HAND = np.full(HAND_DOF, -0.2)  # fingers spread past straight, to let go cleanly
# index, middle, ring (mcp, pip, dip), thumb (rot, mcp, ip): targets past contact, so the
# position actuators squeeze the object.
CLOSED_HAND = np.array([0.45, 0.3, 0.2, 0.45, 0.3, 0.2, 0.45, 0.3, 0.2, 0.0, 0.45, 0.3])
GRASP_Z = 0.1 - WRIST_HEIGHT  # palm 10 cm above the table, 2 cm above the block's top
CARRY_Z = 0.24 - WRIST_HEIGHT
PLACE_Z = GRASP_Z


@dataclass
class HandScriptedExpert:
    """Open-loop phases computed from the object and pad positions read at reset."""

    noun: str = "red block"
    phases: list[tuple[int, str, np.ndarray, np.ndarray]] = field(default_factory=list)
    _t: int = 0
    _start: np.ndarray = field(default_factory=lambda: np.zeros(ACTION_DIM))

    def reset(self, env: gym.Env) -> None:
        unwrapped = env.unwrapped
        obj, target = unwrapped.layout["object"], unwrapped.layout["target"]
        home = np.zeros(3)
        above_obj = np.array([obj[0], obj[1], CARRY_Z])
        at_obj = np.array([obj[0], obj[1], GRASP_Z])
        above_pad = np.array([target[0], target[1], CARRY_Z])
        at_pad = np.array([target[0], target[1], PLACE_Z])
        n = self.noun
        self.phases = [
            (35, f"move the hand above the {n}", above_obj, OPEN_HAND),
            (25, f"lower the hand around the {n}", at_obj, OPEN_HAND),
            (20, f"close the fingers on the {n}", at_obj, CLOSED_HAND),
            (25, f"lift the {n}", above_obj, CLOSED_HAND),
            (35, f"carry the {n} over the green pad", above_pad, CLOSED_HAND),
            (25, f"lower the {n} onto the pad", at_pad, CLOSED_HAND),
            (15, "open the hand", at_pad, RELEASE_HAND),
            (20, "lift the hand away", above_pad + np.array([0, 0, 0.04]), RELEASE_HAND),
        ]
        self._start = np.concatenate([home, np.zeros(3), OPEN_HAND])
        self._t = 0

    def act(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
        if not self.phases:
            raise RuntimeError("call reset(env) before act()")
        t = self._t
        self._t += 1
        previous = self._start
        for duration, text, wrist, fingers in self.phases:
            goal = np.concatenate([wrist, np.zeros(3), fingers])
            if t < duration:
                frac = (t + 1) / duration
                smooth = frac * frac * (3 - 2 * frac)
                return (previous + smooth * (goal - previous)).astype(np.float32), text
            t -= duration
            previous = goal
        return previous.astype(np.float32), text  # after the plan: hold the last pose
