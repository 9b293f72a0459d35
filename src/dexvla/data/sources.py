"""Open any supported dataset directory with one call.

Both readers share the access methods the training windows use: `num_episodes`, `num_frames`,
`embodiment`, `cameras`, `camera_fovy` (degrees, where recorded), `fps`, `episode_length(i)`,
`lowdim(i)` (state, action, substeps, task, reward, env_state), `image(i, t, cam)`,
`images(i, cam)`, `episode(i)`, and `env_state_dim` (the width of the simulator's object
positions, `ENV_STATE`, or None where the dataset has none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dexvla.data.act_hdf5 import EPISODE_GLOB, ActHdf5Dataset
from dexvla.data.lerobot_v3 import INFO_FILE, LeRobotV3Dataset
from dexvla.schema import Episode


class EpisodeSource(Protocol):
    """What the training windows, statistics and annotator need from a dataset."""

    embodiment: str
    cameras: tuple[str, ...]
    camera_fovy: dict[str, float]
    fps: int
    env_state_dim: int | None

    @property
    def num_episodes(self) -> int: ...

    @property
    def num_frames(self) -> int: ...

    def episode_length(self, i: int) -> int: ...

    def lowdim(self, i: int) -> dict[str, Any]: ...

    def image(self, i: int, t: int, cam: str) -> np.ndarray: ...

    def images(self, i: int, cam: str) -> np.ndarray: ...

    def episode(self, i: int) -> Episode: ...


def dataset_format(path: Path) -> str:
    """ "lerobot_v3" or "act_hdf5", or raise naming what was expected."""
    path = Path(path)
    if (path / INFO_FILE).exists():
        return "lerobot_v3"
    if path.is_dir() and any(path.glob(EPISODE_GLOB)):
        return "act_hdf5"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset directory")
    raise ValueError(f"{path}: neither a LeRobot v3 dataset ({INFO_FILE}) nor {EPISODE_GLOB} files")


def open_dataset(path: Path, **kwargs: Any) -> LeRobotV3Dataset | ActHdf5Dataset:
    """Open a LeRobot v3 directory or a directory of ACT HDF5 episodes."""
    if dataset_format(path) == "lerobot_v3":
        return LeRobotV3Dataset(path, **kwargs)
    return ActHdf5Dataset(path, **kwargs)
