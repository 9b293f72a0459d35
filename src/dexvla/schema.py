"""What every layer shares: observation and batch keys, `Observation`, `Episode`, `Reasoning`.

An **observation** is what a robot, a simulator or the server hands the policy:
`{IMAGE_PREFIX + cam: uint8 (H, W, 3), STATE: float32 (S,), TASK: str, EMBODIMENT: str}`.
A **training batch** adds `ACTION (B, Hc, A)`, `ACTION_IS_PAD (B, Hc)` and `SUBSTEP`, with
images as float (B, 3, H, W) in [0, 1] (docs/interfaces.md). Each key is declared here once.
`ENV_STATE`, float32 (E,): the simulator's object positions (xyz, metres), where a simulator
records them; privileged, never from a real robot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dexvla.embodiments import get_embodiment

IMAGE_PREFIX = "observation.images."
STATE = "observation.state"
ENV_STATE = "observation.environment_state"
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


def unknown_fields(config_cls: type, data: dict[str, Any]) -> list[str]:
    """The keys of `data` that are no field of the dataclass `config_cls`, sorted."""
    return sorted(set(data) - {f.name for f in dataclasses.fields(config_cls)})


def check_known_fields(config_cls: type, data: dict[str, Any]) -> None:
    """Refuse a config dict with keys `config_cls` lacks: a typo is an error, not ignored."""
    unknown = unknown_fields(config_cls, data)
    if unknown:
        known = sorted(f.name for f in dataclasses.fields(config_cls))
        raise ValueError(f"unknown {config_cls.__name__} keys: {unknown}; known: {known}")


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


@dataclass
class Episode:
    """A demonstration of T frames.

    Shapes: `images[cam]` uint8 (T, H, W, 3); `state` float32 (T, S); `action` float32 (T, A);
    `substeps` T strings (empty strings where a dataset has none); `reward` float32 (T,).
    `camera_fovy[cam]`: the camera's vertical field of view in degrees, where known (simulation).
    `env_state` float32 (T, E): the simulator's object positions (`ENV_STATE`), where recorded.
    """

    embodiment: str
    task: str
    images: dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    substeps: list[str]
    reward: np.ndarray | None = None
    success: bool = True
    seed: int | None = None
    task_name: str = ""
    info: dict = field(default_factory=dict)
    camera_fovy: dict[str, float] = field(default_factory=dict)
    env_state: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def validate(self) -> None:
        """Raise ValueError naming the field whose shape, dtype or length does not fit."""
        spec = get_embodiment(self.embodiment)
        length = len(self)
        if self.action.ndim != 2 or self.action.shape[1] != spec.action_dim:
            raise ValueError(
                f"episode action: expected (T, {spec.action_dim}) for {spec.name!r}, "
                f"got {tuple(self.action.shape)}"
            )
        if self.state.shape != (length, spec.state_dim):
            raise ValueError(
                f"episode state: expected ({length}, {spec.state_dim}), "
                f"got {tuple(self.state.shape)}"
            )
        missing = [cam for cam in spec.cameras if cam not in self.images]
        if missing:
            raise ValueError(
                f"episode images: missing camera(s) {missing}; got {sorted(self.images)}"
            )
        for cam, frames in self.images.items():
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(
                    f"episode images[{cam!r}]: expected uint8 (T, H, W, 3), "
                    f"got {frames.dtype} {tuple(frames.shape)}"
                )
            if frames.shape[0] != length:
                raise ValueError(
                    f"episode images[{cam!r}]: {frames.shape[0]} frames but {length} actions"
                )
        if len(self.substeps) != length:
            raise ValueError(f"episode substeps: {len(self.substeps)} entries but {length} actions")
        if self.reward is not None and self.reward.shape != (length,):
            raise ValueError(
                f"episode reward: expected ({length},), got {tuple(self.reward.shape)}"
            )
        unknown = sorted(set(self.camera_fovy) - set(self.images))
        if unknown:
            raise ValueError(f"episode camera_fovy: camera(s) {unknown} have no images")
        env = self.env_state
        if env is not None and (
            env.ndim != 2 or env.shape[0] != length or not np.issubdtype(env.dtype, np.floating)
        ):
            raise ValueError(
                f"episode env_state: expected float ({length}, E), "
                f"got {env.dtype} {tuple(env.shape)}"
            )
        named = {"state": self.state, "action": self.action, "env_state": self.env_state}
        for name, values in named.items():
            if values is not None and not np.isfinite(values).all():
                raise ValueError(f"episode {name}: contains NaN or infinite values")
