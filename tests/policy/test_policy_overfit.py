"""A tiny policy memorises one fixed batch: actions and sub-step text."""

import numpy as np
import pytest
import torch

from dexvla.schema import ACTION, ACTION_IS_PAD, EMBODIMENT, STATE, SUBSTEP, TASK, image_key

from .conftest import ALOHA, make_policy

STEPS = 500


def fixed_batch() -> dict:
    """Two samples that differ only in what the cameras see (red vs blue) and what to do."""
    images = torch.zeros(2, 3, 56, 56)
    images[0, 0] = 1.0
    images[1, 2] = 1.0
    time = torch.linspace(0, 3, 50)[None, :, None]
    joints = 1 + torch.arange(14)[None, None, :] / 7
    actions = 0.8 * torch.sin(time * joints + torch.arange(2)[:, None, None] * 1.5)
    batch = {image_key(cam): images.clone() for cam in ALOHA.cameras}
    batch.update(
        {
            STATE: torch.randn(2, 14, generator=torch.Generator().manual_seed(0)),
            ACTION: actions,
            ACTION_IS_PAD: torch.zeros(2, 50, dtype=torch.bool),
            TASK: ["transfer the cube"] * 2,
            SUBSTEP: ["grasp the cube with the right arm", "place the cube into the bin"],
            EMBODIMENT: ["aloha"] * 2,
        }
    )
    return batch


def action_loss(policy, batch) -> float:
    """Action loss averaged over eight fixed draws of noise and timesteps."""
    losses = []
    with torch.no_grad():
        for seed in range(8):
            torch.manual_seed(100 + seed)
            losses.append(policy(batch)[1]["action_loss"])
    return float(np.mean(losses))


@pytest.mark.slow
def test_tiny_policy_overfits_actions_and_substeps():
    torch.manual_seed(0)
    policy = make_policy()
    batch = fixed_batch()
    before = action_loss(policy, batch)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / STEPS)
    for _ in range(STEPS):
        loss, _ = policy(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    after = action_loss(policy, batch)
    assert after < before / 10, (before, after)

    policy.eval()
    observations = []
    for row in range(2):
        image = (batch[image_key("cam_high")][row].permute(1, 2, 0) * 255).byte().numpy()
        obs = {image_key(cam): image for cam in ALOHA.cameras}
        obs.update(
            {
                STATE: batch[STATE][row].numpy(),
                TASK: "transfer the cube",
                EMBODIMENT: "aloha",
            }
        )
        observations.append(obs)
    assert policy.generate_reasoning(observations).text == batch[SUBSTEP]
