"""`LeRobotV3Writer`: append episodes to a LeRobot v3.0 dataset, crash-safe and resumable.

Each episode goes to its own data file (v3 allows any number of episodes per file), so adding
one never rewrites earlier data. Its metadata row goes to a one-row episodes-table file of its
own (`meta/episodes/chunk-C/file-F.parquet`, numbered like the data file; v3 also allows the
episodes table in several files): that file is **the commit point**, and adding an episode
costs that episode only. `close()` consolidates the rows into `meta/episodes/chunk-000/
file-000.parquet`, deletes the one-row files and writes info.json and stats.json, so a closed
dataset has one episodes file. A re-opened writer deletes data files no row points to and
consolidates what a killed writer left, then appends.

An episode with `env_state` (the simulator's object positions) adds an `ENV_STATE` column and
its stats (per episode and in stats.json, as LeRobot expects of every numeric feature; dexvla's
`DatasetStats`, what the policy normalises with, never includes it). Every episode of a dataset
has it, at one width, or none does.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa

from dexvla.data.images import IMAGE_FORMATS, encode_image
from dexvla.data.lerobot_v3.format import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_FILES_SIZE_IN_MB,
    DATA_PATH,
    EPISODES_FILE,
    EPISODES_PATH,
    FOVY_INFO,
    IMAGE_STRUCT,
    INFO_FILE,
    STATS_FILE,
    TASKS_FILE,
    VIDEO_FILES_SIZE_IN_MB,
    chunked,
    describe_feature,
    episode_files,
    read_episode_rows,
    read_tasks,
    row_group_size,
    scalar_feature,
    tasks_table,
)
from dexvla.embodiments import get_embodiment
from dexvla.io import atomic_write_json, atomic_write_parquet, read_json, remove_stale_temps
from dexvla.schema import ACTION, ENV_STATE, REWARD, STATE, SUBSTEP, Episode, image_key
from dexvla.stats import aggregate_stats, feature_stats

IMAGE_STATS_FRAMES = 16


class LeRobotV3Writer:
    """Append episodes to a LeRobot v3.0 dataset, one atomic episode at a time.

    Re-opening an existing dataset resumes it (appends). `completed_seeds()` lets a collector
    skip seeds already recorded. Images are stored as `image_format` ("png", lossless, or "jpeg"
    at `jpeg_quality`).
    """

    def __init__(
        self,
        root: Path,
        *,
        embodiment: str,
        fps: int,
        robot_type: str | None = None,
        image_format: str = "png",
        jpeg_quality: int = 95,
    ) -> None:
        self.root = Path(root)
        self.spec = get_embodiment(embodiment)
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        self.fps = int(fps)
        self.robot_type = robot_type or embodiment
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.features: dict[str, dict[str, Any]] | None = None
        self.tasks: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self.total_frames = 0
        self._consolidated = True  # no row is only in its one-row file
        if (self.root / INFO_FILE).exists():
            self._resume()

    def _resume(self) -> None:
        info_path = self.root / INFO_FILE
        info = read_json(info_path, "dataset info")
        dexvla = info.get("dexvla", {})
        if dexvla.get("embodiment") != self.spec.name:
            raise ValueError(
                f"{info_path}: dataset embodiment {dexvla.get('embodiment')!r} "
                f"differs from {self.spec.name!r}"
            )
        if int(info["fps"]) != self.fps:
            raise ValueError(f"{info_path}: dataset fps {info['fps']} differs from {self.fps}")
        self.robot_type = info.get("robot_type") or self.robot_type
        self.image_format = dexvla.get("image_format", self.image_format)
        self.features = info["features"]
        if (self.root / TASKS_FILE).exists():
            tasks = read_tasks(self.root / TASKS_FILE)
            self.tasks = [tasks[i] for i in sorted(tasks)]
        remove_stale_temps(self.root)
        self.rows = read_episode_rows(self.root)
        self.total_frames = sum(int(row["length"]) for row in self.rows)
        referenced = {self.root / chunked(DATA_PATH, row["episode_index"]) for row in self.rows}
        for path in (self.root / "data").rglob("*.parquet"):
            if path not in referenced:
                path.unlink()
        self._consolidated = False
        self.close()

    @property
    def num_episodes(self) -> int:
        return len(self.rows)

    def completed_seeds(self) -> set[int]:
        """Seeds of the episodes already in the dataset (episodes without a seed are skipped)."""
        return {int(row["dexvla/seed"]) for row in self.rows if row.get("dexvla/seed") is not None}

    def add_episode(self, episode: Episode) -> int:
        """Validate and append one episode; return its episode_index.

        Nothing becomes visible unless the whole episode is written: its data file, then (for
        the dataset's first episode) info.json, then its one-row episodes file, each written
        to a temporary name and renamed.
        """
        episode.validate()
        if episode.embodiment != self.spec.name:
            raise ValueError(
                f"episode embodiment {episode.embodiment!r} differs from the dataset's "
                f"{self.spec.name!r} ({self.root})"
            )
        features = self._features_for(episode)
        first = self.features is None
        if not first and features != self.features:
            raise ValueError(
                f"episode does not match the dataset's features: {self._diff(features)}"
            )
        index = len(self.rows)
        task_index = self._task_index(episode.task)
        table, row = self._episode_table(episode, index, task_index)
        atomic_write_parquet(
            self.root / chunked(DATA_PATH, index), table, row_group_size=row_group_size(table)
        )
        if first:
            self.features = features
            self._write_info()  # a reader of the dataset before close() needs the schema
        atomic_write_parquet(self.root / chunked(EPISODES_PATH, index), pa.Table.from_pylist([row]))
        self.rows.append(row)
        self.total_frames += len(episode)
        self._consolidated = False
        return index

    def close(self) -> None:
        """Consolidate the episodes table, write info.json and stats.json (atomically).

        Safe to call more than once; episodes may be added after it (close again then).
        """
        if self.features is None or self._consolidated:
            return
        if self.rows:
            consolidated = self.root / EPISODES_FILE
            atomic_write_parquet(consolidated, pa.Table.from_pylist(self.rows))
            for path in episode_files(self.root):
                if path != consolidated:
                    path.unlink()
            atomic_write_json(self.root / STATS_FILE, self._dataset_stats())
        self._write_info()
        self._consolidated = True

    def __enter__(self) -> LeRobotV3Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _diff(self, features: dict[str, dict[str, Any]]) -> str:
        assert self.features is not None
        keys = sorted(set(features) ^ set(self.features))
        if keys:
            return f"features present in only one of them: {keys}"
        changed = [k for k in features if features[k] != self.features[k]]
        return "; ".join(
            f"{k}: {describe_feature(features[k])} vs dataset {describe_feature(self.features[k])}"
            for k in changed
        )

    def _features_for(self, episode: Episode) -> dict[str, dict[str, Any]]:
        features: dict[str, dict[str, Any]] = {
            STATE: {
                "dtype": "float32",
                "shape": [self.spec.state_dim],
                "names": [f"state_{i}" for i in range(self.spec.state_dim)],
            },
            ACTION: {
                "dtype": "float32",
                "shape": [self.spec.action_dim],
                "names": [f"action_{i}" for i in range(self.spec.action_dim)],
            },
        }
        for cam in sorted(episode.images):
            _, height, width, channels = episode.images[cam].shape
            features[image_key(cam)] = {
                "dtype": "image",
                "shape": [height, width, channels],
                "names": ["height", "width", "channels"],
            }
            if cam in episode.camera_fovy:
                fovy = round(float(episode.camera_fovy[cam]), 4)
                features[image_key(cam)]["info"] = {FOVY_INFO: fovy}
        if episode.env_state is not None:
            width = int(episode.env_state.shape[1])
            features[ENV_STATE] = {
                "dtype": "float32",
                "shape": [width],
                "names": [f"env_{i}" for i in range(width)],
            }
        features[SUBSTEP] = scalar_feature("string")
        features[REWARD] = scalar_feature("float32")
        features["timestamp"] = scalar_feature("float32")
        for name in ("frame_index", "episode_index", "index", "task_index"):
            features[name] = scalar_feature("int64")
        return features

    def _task_index(self, task: str) -> int:
        if task not in self.tasks:
            atomic_write_parquet(self.root / TASKS_FILE, tasks_table([*self.tasks, task]))
            self.tasks.append(task)
        return self.tasks.index(task)

    def _episode_table(
        self, episode: Episode, index: int, task_index: int
    ) -> tuple[pa.Table, dict[str, Any]]:
        """The episode's data table and its episodes-table row (offsets, stats, dexvla/...)."""
        length, start = len(episode), self.total_frames
        reward = (
            np.full(length, np.nan, np.float32)
            if episode.reward is None
            else episode.reward.astype(np.float32)
        )
        columns: dict[str, pa.Array] = {
            "index": pa.array(np.arange(start, start + length), pa.int64()),
            "episode_index": pa.array(np.full(length, index), pa.int64()),
            "frame_index": pa.array(np.arange(length), pa.int64()),
            "timestamp": pa.array((np.arange(length) / self.fps).astype(np.float32)),
            "task_index": pa.array(np.full(length, task_index), pa.int64()),
            STATE: pa.FixedSizeListArray.from_arrays(
                pa.array(episode.state.astype(np.float32).reshape(-1)), self.spec.state_dim
            ),
            ACTION: pa.FixedSizeListArray.from_arrays(
                pa.array(episode.action.astype(np.float32).reshape(-1)), self.spec.action_dim
            ),
            SUBSTEP: pa.array(list(episode.substeps), pa.string()),
            REWARD: pa.array(reward, pa.float32()),
        }
        row: dict[str, Any] = {
            "episode_index": index,
            "tasks": [episode.task],
            "length": length,
            "data/chunk_index": index // CHUNKS_SIZE,
            "data/file_index": index % CHUNKS_SIZE,
            "dataset_from_index": start,
            "dataset_to_index": start + length,
            "meta/episodes/chunk_index": 0,  # where close() consolidates the row
            "meta/episodes/file_index": 0,
            "dexvla/seed": episode.seed,
            "dexvla/success": bool(episode.success),
            "dexvla/task_name": episode.task_name,
            "dexvla/info": json.dumps(episode.info, default=str),
        }
        stats = {STATE: feature_stats(episode.state), ACTION: feature_stats(episode.action)}
        if episode.env_state is not None:
            env_state = episode.env_state.astype(np.float32)  # (T, E)
            columns[ENV_STATE] = pa.FixedSizeListArray.from_arrays(
                pa.array(env_state.reshape(-1)), env_state.shape[1]
            )
            stats[ENV_STATE] = feature_stats(env_state)
        sample = np.unique(np.linspace(0, length - 1, IMAGE_STATS_FRAMES).astype(int))
        for cam in sorted(episode.images):
            frames = episode.images[cam]  # (T, H, W, 3) uint8
            columns[image_key(cam)] = pa.array(
                [
                    {"bytes": encode_image(f, self.image_format, self.jpeg_quality), "path": None}
                    for f in frames
                ],
                IMAGE_STRUCT,
            )
            pixels = frames[sample].reshape(-1, 3).astype(np.float64) / 255.0
            image_stats = feature_stats(pixels, quantiles=False)
            image_stats = {
                k: (v if k == "count" else v.reshape(3, 1, 1)) for k, v in image_stats.items()
            }
            image_stats["count"] = np.array([len(sample)], dtype=np.int64)
            stats[image_key(cam)] = image_stats
        for key, values in stats.items():
            for name, value in values.items():
                row[f"stats/{key}/{name}"] = np.asarray(value).tolist()
        return pa.table(columns), row

    def _dataset_stats(self) -> dict[str, dict[str, list]]:
        keys = sorted({k.split("/")[1] for row in self.rows for k in row if k.startswith("stats/")})
        out = {}
        for key in keys:
            parts = [
                {
                    k.rsplit("/", 1)[1]: np.asarray(v)
                    for k, v in row.items()
                    if k.startswith(f"stats/{key}/")
                }
                for row in self.rows
            ]
            out[key] = {name: value.tolist() for name, value in aggregate_stats(parts).items()}
        return out

    def _write_info(self) -> None:
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.rows),
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.rows)}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": self.features,
            "dexvla": {"embodiment": self.spec.name, "image_format": self.image_format},
        }
        atomic_write_json(self.root / INFO_FILE, info)
