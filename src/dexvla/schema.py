"""The names every layer shares: observation and batch keys, `Observation`, `Reasoning`.

An **observation** is what a robot, a simulator or the server hands the policy:
`{IMAGE_PREFIX + cam: uint8 (H, W, 3), STATE: float32 (S,), TASK: str, EMBODIMENT: str}`.
A **training batch** adds `ACTION (B, Hc, A)`, `ACTION_IS_PAD (B, Hc)` and `SUBSTEP`, with
images as float (B, 3, H, W) in [0, 1] (docs/interfaces.md). Each key is declared here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE_PREFIX = "observation.images."
STATE = "observation.state"
ACTION = "action"
ACTION_IS_PAD = "action_is_pad"
TASK = "task"
SUBSTEP = "substep"
EMBODIMENT = "embodiment"
REWARD = "next.reward"

Observation = dict[str, Any]
"""One observation dict, as above."""

Observations = Observation | list[Observation]
"""One observation, or a list of them (one embodiment) for a batch."""


def image_key(camera: str) -> str:
    """The observation key of `camera`'s image."""
    return f"{IMAGE_PREFIX}{camera}"


def camera_of(key: str) -> str | None:
    """The camera an image key names, or None for any other key."""
    return key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else None


@dataclass
class Reasoning:
    """The VLM's sub-step(s) and what the policy caches to reuse them without generating.

    `text` is a str for one observation and a list of str, one each, for a list of them.
    `states` is the pooled reasoning-token states (B, D_vlm) of `DexVLAPolicy`; the runtime
    only stores them and hands them back.
    """

    text: str | list[str]
    states: Any = None

    @property
    def texts(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else list(self.text)
