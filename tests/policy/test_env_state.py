"""The simulation-only object-position aids: the "aux" loss and the "oracle" condition."""

import numpy as np
import pytest
import torch

from dexvla.policy.configuration import PolicyConfig
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.policy.processor import ENV_STATE_SCALE
from dexvla.schema import ENV_STATE, SUBSTEP, TASK
from tests.policy.conftest import make_batch, make_observation, make_policy, tiny_config


def with_env_state(batch: dict, dim: int = 3, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    batch[ENV_STATE] = torch.rand(len(batch[TASK]), dim, generator=gen)
    return batch


def test_aux_loss_is_the_head_mse_on_scaled_positions_and_trains_the_vlm():
    torch.manual_seed(0)
    policy = make_policy(env_state="aux", env_state_dim=3, env_state_loss_weight=2.0)
    assert policy.env_head is not None and policy.env_embed is None
    batch = with_env_state(make_batch())
    loss, metrics = policy(batch)
    expected = metrics["action_loss"] + metrics["language_loss"] + 2.0 * metrics["env_state_loss"]
    torch.testing.assert_close(loss.detach(), expected)
    encoding = policy.encode(batch, "aloha", list(batch[SUBSTEP]))
    predicted = policy.env_head(encoding.prompt)
    target = batch[ENV_STATE] * ENV_STATE_SCALE
    torch.testing.assert_close(
        metrics["env_state_loss"], torch.mean((predicted - target) ** 2).detach()
    )
    policy.zero_grad()
    torch.nn.functional.mse_loss(policy.env_head(encoding.prompt), target).backward()
    vision = policy.vlm.model.visual.patch_embed.proj.weight.grad
    assert vision is not None and vision.abs().sum() > 0  # the loss reaches the vision tower


def test_aux_head_is_training_only():
    torch.manual_seed(0)
    policy = make_policy(env_state="aux", env_state_dim=3).eval()
    chunk, _ = policy.predict_action_chunk(make_observation())  # no ENV_STATE needed
    assert chunk.shape == (50, 14) and np.isfinite(chunk).all()


def test_oracle_condition_depends_on_the_positions_at_training_and_inference():
    torch.manual_seed(0)
    policy = make_policy(env_state="oracle", env_state_dim=3).eval()
    assert policy.env_embed is not None and policy.env_head is None
    obs = make_observation()
    with pytest.raises(ValueError, match=r"observation\.environment_state"):
        policy.predict_action_chunk(obs)
    conditions = []
    for position in ([0.0, 0.5, 0.05], [0.2, 0.4, 0.05]):
        observation = {**obs, ENV_STATE: np.asarray(position, np.float32)}
        batch, _ = policy.processor.prepare(observation)
        torch.testing.assert_close(batch[ENV_STATE], torch.tensor([position]))
        pooled = torch.zeros(1, policy.fusion.vlm_dim)
        position = policy.inference_position(pooled, batch)
        conditions.append(policy.condition(pooled, pooled, position))
        chunk, _ = policy.predict_action_chunk(observation)  # runs with the positions given
        assert chunk.shape == (50, 14)
    shift = policy.env_embed.weight @ torch.tensor([0.2, -0.1, 0.0]) * ENV_STATE_SCALE
    torch.testing.assert_close(conditions[1][0] - conditions[0][0], shift)
    with pytest.raises(ValueError, match=r"expected \(B, 3\)"):
        policy(with_env_state(make_batch(), dim=2))


def test_env_state_config_is_checked_and_round_trips():
    with pytest.raises(ValueError, match="env_state_dim >= 1"):
        tiny_config(env_state="aux")
    with pytest.raises(ValueError, match="env_state must be one of"):
        tiny_config(env_state="pose", env_state_dim=3)
    config = tiny_config(env_state="oracle", env_state_dim=6, env_state_loss_weight=0.5)
    assert PolicyConfig.from_dict(config.to_dict()) == config


def test_oracle_policy_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    policy = make_policy(env_state="oracle", env_state_dim=3).eval()
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = DexVLAPolicy.from_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(loaded.env_embed.weight, policy.env_embed.weight)


def test_predicted_positions_are_teacher_forced_in_training_and_the_heads_at_inference():
    torch.manual_seed(0)
    policy = make_policy(env_state="predicted", env_state_dim=3)
    assert policy.env_head is not None and policy.env_embed is not None
    batch = with_env_state(make_batch())
    seen = []
    original = policy.condition
    policy.condition = lambda p, r, position: seen.append(position) or original(p, r, position)
    _, metrics = policy(batch)
    assert "env_state_loss" in metrics
    torch.testing.assert_close(seen[-1], batch[ENV_STATE] * ENV_STATE_SCALE)
    policy.eval()
    chunk, _ = policy.predict_action_chunk(make_observation())  # needs no recorded positions
    assert chunk.shape == (50, 14)
    encoding = policy.encode(*policy.processor.prepare(make_observation()), [""])
    torch.testing.assert_close(seen[-1], policy.env_head(encoding.prompt))
