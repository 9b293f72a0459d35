"""The policy's input and output transforms, kept outside the model.

`DexVLAProcessor` validates raw observations (what a robot, a simulator or the server sends),
turns them into the model's batch layout, normalises state (z-score) and un-normalises actions
(min-max [-1, 1] -> robot units) per embodiment. `dexvla.imaging.resize_images` is the one
resize used by training and inference alike, so the VLM sees the same token count per camera.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dexvla.embodiments import get_embodiment
from dexvla.imaging import resize_images
from dexvla.schema import (
    ACTION,
    EMBODIMENT,
    ENV_STATE,
    IMAGE_PREFIX,
    STATE,
    TASK,
    Observation,
    Observations,
    image_key,
)
from dexvla.stats import DatasetStats, Normalizer

if TYPE_CHECKING:
    from dexvla.policy.configuration import PolicyConfig


class DexVLAProcessor:
    """Validation, batching and normalisation for the embodiments a policy serves."""

    def __init__(
        self,
        image_size: tuple[int, int],
        embodiments: tuple[str, ...],
        stats: DatasetStats | None = None,
    ) -> None:
        self.image_size = tuple(image_size)
        self.embodiments = tuple(embodiments)
        self.stats = stats
        self.normalizer = Normalizer(stats) if stats is not None else None

    def resize(
        self, images: torch.Tensor, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Camera images (B, 3, H, W), uint8 or float in [0, 1], at the policy's size, on
        `device` (default: where they are), in the dtype given. uint8 images stay uint8 (a
        resized one rounded, exactly as the data workers resize training frames): they move to
        an accelerator at a quarter of the bytes and are normalised as bytes by the encoder."""
        return resize_images(images.to(device), self.image_size)

    def set_stats(self, stats: DatasetStats) -> None:
        self.stats = stats
        self.normalizer = Normalizer(stats)

    def require_stats(self) -> DatasetStats:
        """The statistics; an error when there are none (an untrained, unloaded policy)."""
        if self.stats is None:
            raise ValueError(
                "this policy has no normalisation statistics: train it on a dataset or load a "
                "checkpoint that carries stats.json"
            )
        return self.stats

    def _require_normalizer(self) -> Normalizer:
        self.require_stats()
        assert self.normalizer is not None
        return self.normalizer

    def check_embodiment(self, embodiment: str) -> str:
        if embodiment not in self.embodiments:
            raise ValueError(
                f"unknown embodiment {embodiment!r} for this policy; it serves "
                f"{', '.join(self.embodiments)}"
            )
        return embodiment

    def batch_embodiment(self, batch: dict[str, Any]) -> str:
        """The one embodiment of a training batch (heads differ per embodiment)."""
        names = set(batch[EMBODIMENT])
        if len(names) != 1:
            raise ValueError(f"a batch must hold one embodiment, got {sorted(names)}")
        return self.check_embodiment(names.pop())

    def validate(self, observation: Observation) -> str:
        """Check one raw observation; return its embodiment. Errors name what was expected."""
        if not isinstance(observation, dict):
            raise ValueError(f"an observation must be a dict, got {type(observation).__name__}")
        default = self.embodiments[0] if len(self.embodiments) == 1 else None
        embodiment = self.check_embodiment(observation.get(EMBODIMENT, default) or "")
        spec = get_embodiment(embodiment)
        task = observation.get(TASK)
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"observation {TASK!r} must be a non-empty instruction string")
        cameras = sorted(k[len(IMAGE_PREFIX) :] for k in observation if k.startswith(IMAGE_PREFIX))
        missing = [cam for cam in spec.cameras if cam not in cameras]
        if missing:
            raise ValueError(
                f"observation is missing camera(s) {missing} for {embodiment!r}: expected "
                f"{list(spec.cameras)}, got {cameras}"
            )
        for cam in spec.cameras:
            image = np.asarray(observation[image_key(cam)])
            if (
                image.dtype != np.uint8
                or image.ndim != 3
                or image.shape[-1] != 3
                or min(image.shape[:2]) < 1
            ):
                raise ValueError(
                    f"observation image {cam!r}: expected uint8 (H, W, 3) with H, W >= 1, "
                    f"got {image.dtype} {tuple(image.shape)}"
                )
        if STATE not in observation:
            raise ValueError(f"observation is missing {STATE!r} ({spec.state_dim} floats)")
        state = np.asarray(observation[STATE])
        if state.shape != (spec.state_dim,):
            raise ValueError(
                f"observation {STATE!r} for {embodiment!r}: expected shape ({spec.state_dim},), "
                f"got {tuple(state.shape)}"
            )
        if not np.issubdtype(state.dtype, np.number) or not np.isfinite(state).all():
            raise ValueError(
                f"observation {STATE!r} contains NaN, infinite or non-numeric values: "
                f"{np.array2string(state, max_line_width=10**6)}"
            )
        return embodiment

    def prepare(self, observations: Observations) -> tuple[dict[str, Any], str]:
        """Raw observation(s) -> a model batch: images uint8 (B, 3, H, W) as the cameras gave
        them (`resize` converts them), state (B, S) normalised."""
        items = [observations] if isinstance(observations, dict) else list(observations)
        if not items:
            raise ValueError("no observations given")
        embodiments = {self.validate(obs) for obs in items}
        if len(embodiments) != 1:
            raise ValueError(f"observations of one call must share an embodiment: {embodiments}")
        embodiment = embodiments.pop()
        batch: dict[str, Any] = {
            TASK: [obs[TASK] for obs in items],
            EMBODIMENT: [embodiment] * len(items),
        }
        for cam in get_embodiment(embodiment).cameras:
            images = np.stack([np.asarray(obs[image_key(cam)]) for obs in items])
            batch[image_key(cam)] = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8
        state = np.stack([np.asarray(obs[STATE], dtype=np.float32) for obs in items])
        normalizer = self._require_normalizer()
        batch[STATE] = torch.from_numpy(
            np.asarray(normalizer.normalize(STATE, state, embodiment), dtype=np.float32)
        )
        if all(ENV_STATE in obs for obs in items):  # simulation only (PolicyConfig.env_state)
            env = np.stack([np.asarray(obs[ENV_STATE], dtype=np.float32) for obs in items])
            if not np.isfinite(env).all():
                raise ValueError(f"observation {ENV_STATE!r} contains NaN or infinite values")
            batch[ENV_STATE] = torch.from_numpy(env)
        return batch, embodiment

    def unnormalize_actions(self, actions: np.ndarray, embodiment: str) -> np.ndarray:
        """Actions in [-1, 1] (..., A) -> robot units, float32."""
        normalizer = self._require_normalizer()
        return np.asarray(normalizer.unnormalize(ACTION, actions, embodiment), dtype=np.float32)


# Object positions in metres are scaled to decimetres, so the cube's 0.2 m range spans about
# 2 units, the scale of the other normalised inputs and targets.
ENV_STATE_SCALE = 10.0


def object_positions(
    batch: dict[str, Any], config: PolicyConfig, device: torch.device
) -> torch.Tensor:
    """The batch's recorded object positions (B, E), fp32 on `device`, scaled by
    ENV_STATE_SCALE, for a policy whose `env_state` uses them; errors name the key."""
    if ENV_STATE not in batch:
        raise ValueError(
            f"policy {config.name!r} (env_state={config.env_state!r}) needs {ENV_STATE!r} in "
            "every batch and observation (the object positions a simulator records)"
        )
    env = torch.as_tensor(batch[ENV_STATE]).to(device, torch.float32)
    dim = config.env_state_dim
    if env.ndim != 2 or env.shape[1] != dim:
        raise ValueError(f"{ENV_STATE!r}: expected (B, {dim}), got {tuple(env.shape)}")
    return env * ENV_STATE_SCALE
