"""One recorded demonstration, as the simulators produce it and the dataset writers store it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dexvla.embodiments import get_embodiment


@dataclass
class Episode:
    """A demonstration of T frames.

    Shapes: `images[cam]` uint8 (T, H, W, 3); `state` float32 (T, S); `action` float32 (T, A);
    `substeps` T strings (empty strings where a dataset has none); `reward` float32 (T,).
    `camera_fovy[cam]`: the camera's vertical field of view in degrees, where known (simulation).
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
        for name, values in (("state", self.state), ("action", self.action)):
            if not np.isfinite(values).all():
                raise ValueError(f"episode {name}: contains NaN or infinite values")
