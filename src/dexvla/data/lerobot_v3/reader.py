"""`LeRobotV3Dataset`: read a LeRobot v3.0 dataset, whole episodes or single frames.

Reads what `LeRobotV3Writer` writes (also before it is closed: every episodes-table file is
read) and what LeRobot itself writes: video features, several episodes per data file,
variable-length list columns. Simulated cameras' vertical field of view comes from the image
feature's `info` (`camera.fovy`, degrees). A simulator's object positions, where recorded,
are the `ENV_STATE` feature (`env_state_dim`, `lowdim(i)["env_state"]`).

A training sample reads one frame per camera, so a frame read costs about one frame: an image
feature reads the one row group holding the frame (the writer sizes row groups to about one
frame of 640x480 PNG; older files with bigger groups read correctly, at a group's cost), a video
feature seeks to the frame's timestamp (`dexvla.data.video`). Open files, row groups and
videos are kept in per-process caches (row groups up to `GROUP_CACHE_BYTES`), rebuilt after
pickling (DataLoader workers).
"""

from __future__ import annotations

import bisect
import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dexvla.data.images import decode_image
from dexvla.data.lerobot_v3.format import (
    DATA_PATH,
    EPISODES_DIR,
    FOVY_INFO,
    INFO_FILE,
    TASKS_FILE,
    VIDEO_PATH,
    column_to_numpy,
    read_episode_rows,
    read_tasks,
)
from dexvla.data.video import VideoFile
from dexvla.embodiments import get_embodiment
from dexvla.io import read_json, reading
from dexvla.schema import (
    ACTION,
    EMBODIMENT,
    ENV_STATE,
    REWARD,
    STATE,
    SUBSTEP,
    TASK,
    Episode,
    camera_of,
    image_key,
)

CORRUPT = "corrupt data file"


OPEN_FILES = 256
"""Data files kept open per process: re-opening one (its footer) costs more than the frame."""
GROUP_CACHE_BYTES = 256 * 2**20
"""Row-group columns kept per process, in bytes: a small data set's images stay in memory after
one pass (50 episodes at 84 px are about 80 MB); at 640x480, about 300 frames' groups."""


class _LruCache(OrderedDict):
    """A least-recently-used cache holding at most `capacity` units, where an entry weighs
    `size(entry)` units (default 1: a count of entries); the newest entry always stays."""

    def __init__(self, capacity: int, size: Callable[[Any], int] = lambda _: 1) -> None:
        super().__init__()
        self.capacity, self.size, self.used = capacity, size, 0

    def fetch(self, key: Any, load: Callable[[], Any]) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = load()
        self[key] = value
        self.used += self.size(value)
        while self.used > self.capacity and len(self) > 1:
            _, old = self.popitem(last=False)
            self.used -= self.size(old)
        return value


class LeRobotV3Dataset:
    """Read a LeRobot v3.0 dataset: whole episodes, or single frames for training.

    `embodiment` overrides the dataset's (info.json `dexvla.embodiment`, else `robot_type`).
    `camera_map` renames LeRobot camera keys (`observation.images.<key>`) to embodiment
    cameras, e.g. `{"top": "cam_high"}`.
    """

    def __init__(
        self,
        root: Path,
        *,
        embodiment: str | None = None,
        camera_map: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        info_path = self.root / INFO_FILE
        if not info_path.exists():
            raise FileNotFoundError(f"{self.root}: not a LeRobot dataset (no {INFO_FILE})")
        self.info = read_json(info_path, "dataset info")
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3."):
            raise ValueError(f"{info_path}: codebase_version {version!r}; only v3.x is supported")
        name = (
            embodiment
            or self.info.get("dexvla", {}).get("embodiment")
            or self.info.get("robot_type")
        )
        try:
            self.spec = get_embodiment(str(name))
        except KeyError as error:
            raise KeyError(f"{info_path}: {error.args[0]}") from None
        self.embodiment = self.spec.name
        self.fps = int(self.info["fps"])
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        for key, width in ((STATE, self.spec.state_dim), (ACTION, self.spec.action_dim)):
            shape = self.features.get(key, {}).get("shape")
            if shape is None or int(np.prod(shape)) != width:
                raise ValueError(
                    f"{info_path}: feature {key!r} shape {shape} does not fit embodiment "
                    f"{self.embodiment!r} ({width})"
                )
        mapping = camera_map or {}
        self.camera_keys = {
            mapping.get(cam, cam): key
            for key, feature in self.features.items()
            if (cam := camera_of(key)) is not None and feature.get("dtype") in ("image", "video")
        }
        self.cameras = tuple(sorted(self.camera_keys))
        env_shape = self.features.get(ENV_STATE, {}).get("shape")
        self.env_state_dim = None if env_shape is None else int(np.prod(env_shape))
        self.camera_fovy = {
            cam: float(self.features[key]["info"][FOVY_INFO])
            for cam, key in self.camera_keys.items()
            if FOVY_INFO in (self.features[key].get("info") or {})
        }
        self.tasks = read_tasks(self.root / TASKS_FILE)
        self.rows = read_episode_rows(self.root)
        if not self.rows:
            raise FileNotFoundError(f"{self.root}: no episode metadata under {EPISODES_DIR}/")
        self.lengths = np.array([int(r["length"]) for r in self.rows], dtype=np.int64)
        self._lowdim: dict[int, dict[str, Any]] = {}
        self._reset_handles()

    def _reset_handles(self) -> None:
        self._files = _LruCache(OPEN_FILES)  # path -> (ParquetFile, first row of each group)
        self._offsets: dict[int, int] = {}
        # (path, row group, column) -> the group's column, GROUP_CACHE_BYTES in all
        self._groups = _LruCache(GROUP_CACHE_BYTES, lambda column: column.nbytes)
        self._videos = _LruCache(8)  # path -> VideoFile

    @property
    def num_episodes(self) -> int:
        return len(self.rows)

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def episode_length(self, i: int) -> int:
        return int(self.lengths[i])

    def data_file(self, i: int) -> Path:
        """The parquet file holding episode i's frames."""
        row = self.rows[i]
        template = self.info.get("data_path") or DATA_PATH
        return self.root / template.format(
            chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
        )

    def _open(self, path: Path) -> tuple[pq.ParquetFile, list[int]]:
        """The file's handle and the first row of each of its row groups (cached)."""

        def load() -> tuple[pq.ParquetFile, list[int]]:
            if not path.exists():
                raise FileNotFoundError(f"{path}: data file missing")
            with reading(path, CORRUPT):
                handle = pq.ParquetFile(path, pre_buffer=False)
            sizes = [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
            return handle, np.concatenate([[0], np.cumsum(sizes)]).tolist()

        return self._files.fetch(path, load)

    def _parquet(self, path: Path) -> pq.ParquetFile:
        return self._open(path)[0]

    def frame_offset(self, i: int) -> int:
        """Row of episode i's first frame inside its data file."""
        if i not in self._offsets:
            path = self.data_file(i)
            handle = self._parquet(path)
            with reading(path, CORRUPT):
                index = handle.read(columns=["index"]).column("index")
            start = int(self.rows[i]["dataset_from_index"])
            position = pc.index(index, start).as_py()
            if position < 0:
                raise ValueError(
                    f"{path}: episode {self.rows[i]['episode_index']} (index {start}) not found"
                )
            self._offsets[i] = position
        return self._offsets[i]

    def _read_rows(self, i: int, columns: list[str]) -> pa.Table:
        path = self.data_file(i)
        handle = self._parquet(path)
        missing = [c for c in columns if c not in handle.schema_arrow.names]
        if missing:
            raise ValueError(f"{path}: episode {i} has no column(s) {missing}")
        with reading(path, CORRUPT):
            table = handle.read(columns=columns)
        table = table.slice(self.frame_offset(i), int(self.lengths[i]))
        if table.num_rows != self.lengths[i]:
            raise ValueError(
                f"{path}: episode {i} has {table.num_rows} frames, metadata says {self.lengths[i]}"
            )
        return table

    def lowdim(self, i: int) -> dict[str, Any]:
        """Episode i's `state`, `action` (float32), `substeps`, `task`, `reward` and
        `env_state` (float32 (T, E), or None without the feature) (cached)."""
        if i not in self._lowdim:
            if not 0 <= i < self.num_episodes:
                raise IndexError(f"episode {i} out of range (dataset has {self.num_episodes})")
            names = [STATE, ACTION, "task_index"]
            schema = self._parquet(self.data_file(i)).schema_arrow.names
            extra = [c for c in (SUBSTEP, REWARD) if c in schema]
            if self.env_state_dim is not None:
                extra.append(ENV_STATE)  # in every episode's file: missing is an error
            table = self._read_rows(i, names + extra)
            where = f"{self.data_file(i)} episode {i}"
            task_index = int(table.column("task_index")[0].as_py())
            if task_index not in self.tasks:
                raise ValueError(f"{where}: task_index {task_index} not in {TASKS_FILE}")
            reward = None
            if REWARD in extra:
                values = table.column(REWARD).to_numpy(zero_copy_only=False).astype(np.float32)
                reward = None if np.isnan(values).all() else values
            self._lowdim[i] = {
                "state": column_to_numpy(table, STATE, self.spec.state_dim, where),
                "action": column_to_numpy(table, ACTION, self.spec.action_dim, where),
                "substeps": (
                    [s or "" for s in table.column(SUBSTEP).to_pylist()]
                    if SUBSTEP in extra
                    else [""] * int(self.lengths[i])
                ),
                "task": self.tasks[task_index],
                "reward": reward,
                "env_state": (
                    None
                    if self.env_state_dim is None
                    else column_to_numpy(table, ENV_STATE, self.env_state_dim, where)
                ),
            }
        return self._lowdim[i]

    def image(self, i: int, t: int, cam: str) -> np.ndarray:
        """Frame t of episode i from camera `cam`, uint8 (H, W, 3)."""
        key = self.camera_keys.get(cam)
        if key is None:
            raise KeyError(f"{self.root}: no camera {cam!r}; cameras are {list(self.cameras)}")
        if not 0 <= t < self.lengths[i]:
            raise IndexError(f"frame {t} out of range for episode {i} ({self.lengths[i]} frames)")
        if self.features[key]["dtype"] == "video":
            return self._video_frames(i, key, t, 1)[0]
        path = self.data_file(i)
        handle, starts = self._open(path)
        row = self.frame_offset(i) + t
        group = bisect.bisect_right(starts, row) - 1

        def load() -> pa.ChunkedArray:
            with reading(path, CORRUPT):
                return handle.read_row_group(group, [key], use_threads=False).column(0)

        column = self._groups.fetch((path, group, key), load)
        return self._decode(column[row - starts[group]].as_py(), i, t, cam)

    def observation(self, i: int, t: int) -> dict[str, Any]:
        """Frame t of episode i as the robot or simulator gave it: every camera (uint8), the
        state (robot units), the task, the embodiment and, where recorded, `ENV_STATE`."""
        low = self.lowdim(i)
        obs: dict[str, Any] = {image_key(cam): self.image(i, t, cam) for cam in self.cameras}
        obs.update({STATE: low["state"][t], TASK: low["task"], EMBODIMENT: self.embodiment})
        if low["env_state"] is not None:
            obs[ENV_STATE] = low["env_state"][t]
        return obs

    def _decode(self, value: dict[str, Any] | None, i: int, t: int, cam: str) -> np.ndarray:
        """An image feature's `{bytes, path}` value -> uint8 (H, W, 3)."""
        where = f"{self.data_file(i)}: episode {i} frame {t}: camera {cam!r}"
        if value is None or not value.get("bytes"):
            raise ValueError(f"{where} has no image")
        return decode_image(value["bytes"], where)

    def _video_frames(self, i: int, key: str, t: int, count: int) -> np.ndarray:
        """Frames t .. t+count-1 of episode i from video feature `key`, uint8 (count, H, W, 3)."""
        row = self.rows[i]
        path = self.root / (self.info.get("video_path") or VIDEO_PATH).format(
            video_key=key,
            chunk_index=int(row[f"videos/{key}/chunk_index"]),
            file_index=int(row[f"videos/{key}/file_index"]),
        )
        if not path.exists():
            raise FileNotFoundError(f"{path}: video file missing (episode {i}, {key})")
        video = self._videos.fetch(path, lambda: VideoFile(path))
        start = float(row[f"videos/{key}/from_timestamp"]) + t / self.fps
        try:
            return video.frames(start, count, self.fps)
        except ValueError as error:
            raise ValueError(f"episode {i} frame {t}: {error}") from None

    def images(self, i: int, cam: str) -> np.ndarray:
        """All frames of episode i from camera `cam`, uint8 (T, H, W, 3)."""
        key = self.camera_keys[cam]
        if self.features[key]["dtype"] == "video":
            return self._video_frames(i, key, 0, int(self.lengths[i]))
        column = self._read_rows(i, [key]).column(0).to_pylist()
        return np.stack([self._decode(value, i, t, cam) for t, value in enumerate(column)])

    def episode(self, i: int) -> Episode:
        """Episode i, fully decoded and validated."""
        low = self.lowdim(i)
        row = self.rows[i]
        seed = row.get("dexvla/seed")
        episode = Episode(
            embodiment=self.embodiment,
            task=low["task"],
            images={cam: self.images(i, cam) for cam in self.cameras},
            state=low["state"].copy(),
            action=low["action"].copy(),
            substeps=list(low["substeps"]),
            reward=None if low["reward"] is None else low["reward"].copy(),
            success=bool(row.get("dexvla/success", True)),
            seed=None if seed is None else int(seed),
            task_name=row.get("dexvla/task_name") or "",
            info=json.loads(row.get("dexvla/info") or "{}"),
            camera_fovy=dict(self.camera_fovy),
            env_state=None if low["env_state"] is None else low["env_state"].copy(),
        )
        try:
            episode.validate()
        except ValueError as error:
            raise ValueError(f"{self.data_file(i)}: episode {i}: {error}") from None
        return episode

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("_files", "_offsets", "_groups", "_videos"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_handles()
