"""The one closed-loop rollout: a policy drives a task's environment from a seeded reset.

Every episode of the package runs through `roll_out`: recording demonstrations (`run_expert`,
`collect_episode`), checking the scripted experts (`expert_succeeds`) and evaluation
(`dexvla.eval.rollout.run_episode`). One stopping rule holds for all of them: an episode ends
at `max_steps` (default the task's), when the environment truncates or terminates without
success, or `after_success` steps after the first step whose `info["is_success"]` is true.
Recording passes the task's `post_success_steps`, so a demonstration shows the settled end
state; the success check and evaluation pass 0 and stop at the success.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from dexvla.embodiments import get_embodiment
from dexvla.schema import EMBODIMENT, ENV_STATE, STATE, TASK, Episode, Observation, image_key
from dexvla.sim.registry import (
    ImageSize,
    ScriptedExpert,
    TaskSpec,
    get_task,
    make_env,
    make_expert,
)

FrameFn = Callable[[Observation, str, int], Any]
"""`frame_fn(obs, substep, t)`: what to keep of each observation (images, a video frame)."""


class EpisodePolicy(Protocol):
    """What the loop drives: reset per episode, then one action and sub-step per step."""

    def reset(self, env: gym.Env, seed: int) -> None: ...

    def act(self, obs: Observation, t: int) -> tuple[np.ndarray, str]: ...


class ExpertPolicy:
    """A scripted expert as an `EpisodePolicy` (it plans from the env's layout at reset)."""

    def __init__(self, expert: ScriptedExpert) -> None:
        self.expert = expert

    def reset(self, env: gym.Env, seed: int) -> None:
        self.expert.reset(env)

    def act(self, obs: Observation, t: int) -> tuple[np.ndarray, str]:
        action, substep = self.expert.act(obs)
        return np.asarray(action, dtype=np.float32), substep


@dataclass
class Rollout:
    """What one episode produced, per control step t = 0..T-1."""

    seed: int
    states: np.ndarray  # (T, S) observed before each action
    actions: np.ndarray  # (T, A) executed
    substeps: list[str]
    rewards: list[float]
    stages: list[int]  # reward stage after each step
    step_ms: list[float]  # time inside `policy.act`
    success_step: int | None  # the first step after which the task succeeded
    info: dict[str, Any]  # the last step's
    frames: list[Any] = field(default_factory=list)  # frame_fn's, when given
    env_states: np.ndarray | None = None  # (T, E) ENV_STATE before each action, when observed

    @property
    def success(self) -> bool:
        return self.success_step is not None

    @property
    def steps(self) -> int:
        return len(self.substeps)


def roll_out(
    env: gym.Env,
    policy: EpisodePolicy,
    spec: TaskSpec,
    *,
    seed: int,
    max_steps: int | None = None,
    after_success: int = 0,
    frame_fn: FrameFn | None = None,
) -> Rollout:
    """Run one episode from `env.reset(seed=seed)` under the module's stopping rule.

    The policy sees each observation with the task's instruction and embodiment added.
    Observations that carry `ENV_STATE` have it recorded per step like the state.
    """
    limit = spec.max_steps if max_steps is None else max_steps
    if limit < 1 or after_success < 0:
        raise ValueError(f"need max_steps >= 1, after_success >= 0; got {limit}, {after_success}")
    obs, info = env.reset(seed=seed)
    policy.reset(env, seed)
    states, actions, substeps, rewards, stages, step_ms, frames = [], [], [], [], [], [], []
    env_states = []
    task = {TASK: spec.instruction, EMBODIMENT: spec.embodiment}
    success_step = None
    for t in range(limit):
        start = time.perf_counter()
        action, substep = policy.act({**obs, **task}, t)
        step_ms.append((time.perf_counter() - start) * 1e3)
        if frame_fn is not None:
            frames.append(frame_fn(obs, substep, t))
        states.append(np.asarray(obs[STATE], dtype=np.float32))
        if ENV_STATE in obs:
            env_states.append(np.asarray(obs[ENV_STATE], dtype=np.float32))
        actions.append(np.asarray(action, dtype=np.float32))
        substeps.append(substep)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        stages.append(int(info.get("reward_stage", int(bool(info["is_success"])))))
        if info["is_success"] and success_step is None:
            success_step = t
        if success_step is not None and t - success_step >= after_success:
            break
        if truncated or (terminated and success_step is None):
            break
    return Rollout(
        seed=seed,
        states=np.stack(states),
        actions=np.stack(actions),
        substeps=substeps,
        rewards=rewards,
        stages=stages,
        step_ms=step_ms,
        success_step=success_step,
        info=info,
        frames=frames,
        env_states=np.stack(env_states) if env_states else None,
    )


def run_expert(
    env: gym.Env, expert: ScriptedExpert, spec: TaskSpec, seed: int
) -> tuple[Episode, dict]:
    """Record the expert's demonstration from `env.reset(seed=seed)`: every frame, until
    `spec.post_success_steps` after the first success. Returns it and the last step's info."""
    cameras = get_embodiment(spec.embodiment).cameras
    run = roll_out(
        env,
        ExpertPolicy(expert),
        spec,
        seed=seed,
        after_success=spec.post_success_steps,
        frame_fn=lambda obs, substep, t: {cam: obs[image_key(cam)] for cam in cameras},
    )
    episode = Episode(
        embodiment=spec.embodiment,
        task=spec.instruction,
        images={cam: np.stack([frame[cam] for frame in run.frames]) for cam in cameras},
        state=run.states,
        action=run.actions,
        substeps=run.substeps,
        reward=np.asarray(run.rewards, dtype=np.float32),
        success=run.success,
        seed=seed,
        task_name=spec.name,
        info={"best_reward_stage": max(run.stages), "success_step": run.success_step},
        camera_fovy=dict(env.unwrapped.camera_fovy),
        env_state=run.env_states,
    )
    episode.validate()
    return episode, run.info


def collect_episode(task_name: str, seed: int, image_size: ImageSize = 128) -> Episode:
    """Record one scripted demonstration of `task_name` from seed `seed`."""
    spec = get_task(task_name)
    env = make_env(task_name, image_size=image_size)
    try:
        episode, _ = run_expert(env, make_expert(task_name), spec, seed)
    finally:
        env.close()
    return episode


def expert_succeeds(task_name: str, seeds: Iterable[int]) -> dict[int, bool]:
    """Run the scripted expert without rendering; map each seed to whether the task succeeded."""
    spec = get_task(task_name)
    env = make_env(task_name, render=False)
    policy = ExpertPolicy(make_expert(task_name))
    try:
        return {seed: roll_out(env, policy, spec, seed=seed).success for seed in seeds}
    finally:
        env.close()
