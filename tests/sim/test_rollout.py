"""The one rollout loop: its stopping rule and what it records."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest

from dexvla.schema import EMBODIMENT, ENV_STATE, STATE, TASK
from dexvla.sim.registry import TaskSpec, get_task, make_env, make_expert
from dexvla.sim.rollout import roll_out, run_expert


class CountingEnv(gym.Env):
    """State = the step count; succeeds from `success_at` steps on (terminated while it does),
    truncates at `limit`, or terminates without success at `fail_at`."""

    def __init__(self, success_at=None, limit=50, fail_at=None, lose_success=False):
        self.success_at, self.limit, self.fail_at = success_at, limit, fail_at
        self.lose_success = lose_success
        self.steps = 0

    def _obs(self):
        return {STATE: np.array([self.steps], np.float32)}

    def reset(self, *, seed=None, options=None):
        self.steps = 0
        return self._obs(), {"is_success": False}

    def step(self, action):
        self.steps += 1
        success = self.success_at is not None and self.steps >= self.success_at
        if self.lose_success and self.steps > self.success_at:
            success = False
        failed = self.fail_at is not None and self.steps >= self.fail_at
        info = {"is_success": success, "reward_stage": int(success), "max_reward": 1}
        return self._obs(), float(success), success or failed, self.steps >= self.limit, info


class ConstantPolicy:
    def __init__(self):
        self.seen = []

    def reset(self, env, seed):
        self.seen.clear()

    def act(self, obs, t):
        self.seen.append(obs)
        return np.zeros(4), f"step {t}"


SPEC = TaskSpec(
    name="counting",
    embodiment="sawyer",
    instruction="count",
    max_steps=30,
    fps=10,
    suite="test",
    env_factory=CountingEnv,
    expert_factory=ConstantPolicy,
)


def test_stops_at_the_first_success():
    run = roll_out(CountingEnv(success_at=5), ConstantPolicy(), SPEC, seed=0)
    assert (run.success, run.success_step, run.steps) == (True, 4, 5)
    assert run.stages == [0, 0, 0, 0, 1] and run.info["is_success"]


def test_after_success_records_that_many_more_steps_even_if_success_is_lost():
    env = CountingEnv(success_at=5, lose_success=True)
    run = roll_out(env, ConstantPolicy(), SPEC, seed=0, after_success=3)
    assert (run.success, run.success_step, run.steps) == (True, 4, 8)
    assert run.stages == [0, 0, 0, 0, 1, 0, 0, 0]


def test_truncation_max_steps_and_failed_termination_stop_without_success():
    truncated = roll_out(CountingEnv(limit=7), ConstantPolicy(), SPEC, seed=0, after_success=3)
    assert (truncated.success, truncated.steps) == (False, 7)
    assert roll_out(CountingEnv(), ConstantPolicy(), SPEC, seed=0).steps == SPEC.max_steps
    assert roll_out(CountingEnv(), ConstantPolicy(), SPEC, seed=0, max_steps=4).steps == 4
    failed = roll_out(CountingEnv(fail_at=3), ConstantPolicy(), SPEC, seed=0, after_success=3)
    assert (failed.success, failed.steps) == (False, 3)
    # truncation also ends the frames recorded after a success
    late = roll_out(CountingEnv(success_at=5, limit=6), ConstantPolicy(), SPEC, seed=0,
                    after_success=3)  # fmt: skip
    assert (late.success_step, late.steps) == (4, 6)


def test_records_states_before_actions_task_keys_and_frames():
    policy = ConstantPolicy()
    run = roll_out(
        CountingEnv(success_at=3),
        policy,
        SPEC,
        seed=0,
        frame_fn=lambda obs, substep, t: (int(obs[STATE][0]), substep, t, TASK in obs),
    )
    np.testing.assert_array_equal(run.states[:, 0], [0, 1, 2])
    assert run.actions.shape == (3, 4) and run.actions.dtype == np.float32
    assert run.frames == [(0, "step 0", 0, False), (1, "step 1", 1, False), (2, "step 2", 2, False)]
    assert all(obs[TASK] == "count" and obs[EMBODIMENT] == "sawyer" for obs in policy.seen)
    assert len(run.step_ms) == 3


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_steps >= 1"):
        roll_out(CountingEnv(), ConstantPolicy(), SPEC, seed=0, max_steps=0)


class ObjectEnv(CountingEnv):
    """A CountingEnv whose observations also carry an object position (2 * steps, -steps, 1)."""

    def _obs(self):
        return {**super()._obs(), ENV_STATE: np.array([2 * self.steps, -self.steps, 1.0])}


def test_env_state_is_recorded_per_step_only_when_observed():
    run = roll_out(ObjectEnv(limit=4), ConstantPolicy(), SPEC, seed=0)
    assert run.env_states.dtype == np.float32 and run.env_states.shape == (4, 3)
    np.testing.assert_array_equal(run.env_states[:, 0], 2 * run.states[:, 0])  # before actions
    assert roll_out(CountingEnv(limit=4), ConstantPolicy(), SPEC, seed=0).env_states is None


def test_recorded_aloha_episode_carries_the_cube_positions():
    spec = dataclasses.replace(get_task("aloha-transfer-cube"), max_steps=5)
    env = make_env(spec.name, image_size=8)
    try:
        episode, _ = run_expert(env, make_expert(spec.name), spec, seed=2)
    finally:
        env.close()
    assert episode.env_state.dtype == np.float32 and episode.env_state.shape == (5, 3)
    first = env.unwrapped.scene.sample_layout(2)["red_box_joint"][:3]
    np.testing.assert_allclose(episode.env_state[0], first, atol=1e-6)  # the reset's placement
