"""The ALOHA scripted expert, in the style of ACT's scripted policies.

It plans waypoints in end-effector space, runs them on gym-aloha's shipped end-effector (mocap)
models with the same object poses, records the joint positions the arms reach and replays
those as joint-position actions. Every waypoint segment carries the sub-step text recorded
with each frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import gymnasium as gym
import mujoco
import numpy as np
from gym_aloha.constants import PUPPET_GRIPPER_POSITION_CLOSE

from dexvla.sim.aloha.env import CONTROL_DT, load_aloha_model, reset_arms, unnormalize_gripper
from dexvla.sim.aloha.scenes import (
    IDENTITY_QUAT,
    INIT_MOCAP_LEFT,
    INIT_MOCAP_RIGHT,
    AlohaScene,
    apply_layout,
)


@dataclass
class AlohaScriptedExpert:
    """Plans in end-effector space, records joint positions, replays them as actions."""

    scene: AlohaScene
    actions: np.ndarray = field(default_factory=lambda: np.zeros((0, 14), np.float32))
    substeps: list[str] = field(default_factory=list)
    planned_stage: int = 0
    _t: int = 0

    def reset(self, env: gym.Env) -> None:
        """Plan for the scene `env` was just reset to (its object layout)."""
        layout = env.unwrapped.layout
        self.actions, self.substeps, self.planned_stage = self._rollout_ee(layout)
        self._t = 0

    def _rollout_ee(self, layout: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str], int]:
        model = _ee_model(self.scene.ee_xml, self.scene.extra_xml)
        data = mujoco.MjData(model)
        reset_arms(data)
        data.mocap_pos[0], data.mocap_quat[0] = INIT_MOCAP_LEFT, IDENTITY_QUAT
        data.mocap_pos[1], data.mocap_quat[1] = INIT_MOCAP_RIGHT, IDENTITY_QUAT
        closed = PUPPET_GRIPPER_POSITION_CLOSE
        data.ctrl[:] = [closed, -closed, closed, -closed]
        apply_layout(model, data, layout)
        mujoco.mj_forward(model, data)
        plan = self.scene.plan(layout)
        n_sub = round(CONTROL_DT / model.opt.timestep)
        actions, substeps, best = [], [], 0
        for t in range(self.scene.plan_length):
            lxyz, lquat, lg = plan.pose(plan.left, t)
            rxyz, rquat, rg = plan.pose(plan.right, t)
            data.mocap_pos[0], data.mocap_quat[0] = lxyz, lquat
            data.mocap_pos[1], data.mocap_quat[1] = rxyz, rquat
            left, right = unnormalize_gripper(lg), unnormalize_gripper(rg)
            data.ctrl[:] = [left, -left, right, -right]
            mujoco.mj_step(model, data, nstep=n_sub)
            q = data.qpos
            actions.append(np.concatenate([q[:6], [lg], q[8:14], [rg]]))
            substeps.append(plan.substep(t))
            best = max(best, self.scene.reward(model, data, layout))
        return np.asarray(actions, dtype=np.float32), substeps, best

    def act(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
        t = min(self._t, len(self.actions) - 1)
        self._t += 1
        return self.actions[t].copy(), self.substeps[t]


@cache
def _ee_model_cached(xml: str, extra: str | None) -> mujoco.MjModel:
    return load_aloha_model(xml, extra)


def _ee_model(xml: str, extra: str | None) -> mujoco.MjModel:
    """The end-effector model; cached, but copied since layouts move fixed bodies."""
    return _ee_model_cached(xml, extra).__copy__()
