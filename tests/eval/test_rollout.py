"""Evaluation episodes run through the one rollout loop that recording uses."""

import numpy as np

import dexvla.sim as sim
from dexvla.eval.rollout import ScriptedPolicy, run_episode


def test_recording_and_evaluation_share_the_success_step():
    """A demonstration runs `post_success_steps` past the success that evaluation stops at."""
    spec = sim.get_task("sawyer-reach")
    episode = sim.collect_episode("sawyer-reach", seed=0, image_size=8)
    env = sim.make_env("sawyer-reach", image_size=8)
    try:
        result = run_episode(
            env,
            ScriptedPolicy(sim.make_expert("sawyer-reach")),
            spec,
            index=0,
            seed=0,
            max_steps=spec.max_steps,
        )
    finally:
        env.close()
    assert result.success and result.success_step == episode.info["success_step"]
    assert result.steps == result.success_step + 1
    assert len(episode) == result.success_step + 1 + spec.post_success_steps
    np.testing.assert_array_equal(episode.action[: result.steps], result.actions)
    assert sim.expert_succeeds("sawyer-reach", [0]) == {0: True}
