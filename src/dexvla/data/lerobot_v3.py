"""LeRobot v3.0 datasets: a crash-safe writer and a reader with random frame access.

Layout (LeRobot `CODEBASE_VERSION = "v3.0"`)::

    meta/info.json                 schema (features), fps, robot_type, path templates, totals
    meta/stats.json                per-feature min/max/mean/std/count (+ quantiles)
    meta/tasks.parquet             task string -> task_index (pandas index "task")
    meta/episodes/chunk-000/file-000.parquet   one row per episode (offsets, stats, ...)
    data/chunk-XXX/file-YYY.parquet            frames

Choices made here (see docs/data.md): images are stored in the data parquet as LeRobot
`image` features (PNG bytes in a `{bytes, path}` struct, lossless; JPEG optional), not mp4;
each episode goes to its own data file (v3 allows any number of episodes per file), so adding
an episode never rewrites earlier data. The per-frame sub-step text is the string column
`substep`; the episode instruction is the task in `tasks.parquet`. The episodes table is the
commit point: an episode exists once its row is there, and a re-opened writer deletes data files
no row points to. The reader also reads datasets LeRobot itself writes (video features, several
episodes per file, variable-length list columns). Simulated cameras record their vertical field
of view in the image feature's `info` (`camera.fovy`, degrees).
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from dexvla.embodiments import get_embodiment
from dexvla.io import (
    atomic_write_json,
    atomic_write_parquet,
    remove_stale_temps,
)
from dexvla.schema import Episode
from dexvla.stats import aggregate_stats, feature_stats

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_FILE = "meta/episodes/chunk-000/file-000.parquet"
INFO_FILE = "meta/info.json"
STATS_FILE = "meta/stats.json"
TASKS_FILE = "meta/tasks.parquet"
IMAGE_PREFIX = "observation.images."
STATE = "observation.state"
ACTION = "action"
SUBSTEP = "substep"
REWARD = "next.reward"
ROW_GROUP_SIZE = 32
IMAGE_STATS_FRAMES = 16
IMAGE_FORMATS = ("png", "jpeg")
FOVY_INFO = "camera.fovy"  # an image feature's `info` entry: vertical field of view, degrees

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _scalar_feature(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [1], "names": None}


def _describe(feature: dict[str, Any]) -> str:
    """A feature's shape, and its camera field of view where recorded (for mismatch errors)."""
    fovy = (feature.get("info") or {}).get(FOVY_INFO)
    return f"{feature.get('shape')}" + ("" if fovy is None else f" at {fovy} deg field of view")


def _encode_image(frame: np.ndarray, image_format: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, 3)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _tasks_table(tasks: list[str]) -> pa.Table:
    """tasks.parquet as pandas writes a DataFrame indexed by task (what LeRobot reads)."""
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "task": pa.array(tasks, pa.string()),
        }
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def read_tasks(path: Path) -> dict[int, str]:
    """task_index -> task from a tasks.parquet written by this module, pandas or LeRobot."""
    table = pq.read_table(path)
    names = table.column_names
    text_column = next(
        (c for c in ("task", "__index_level_0__") if c in names),
        next((c for c in names if pa.types.is_string(table.schema.field(c).type)), None),
    )
    if text_column is None or "task_index" not in names:
        raise ValueError(f"{path}: expected columns task_index and task, got {names}")
    return dict(
        zip(
            table.column("task_index").to_pylist(),
            table.column(text_column).to_pylist(),
            strict=True,
        )
    )


def _column_to_numpy(column: pa.ChunkedArray, width: int, where: str) -> np.ndarray:
    """A fixed- or variable-size list column -> float32 (N, width)."""
    array = column.combine_chunks()
    if not (pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type)):
        raise ValueError(f"{where}: expected a list column, got {array.type}")
    flat = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if flat.size != len(array) * width:
        raise ValueError(
            f"{where}: expected {width} values per frame, got {flat.size} for {len(array)} frames"
        )
    return flat.reshape(len(array), width)


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
        if (self.root / INFO_FILE).exists():
            self._resume()

    # ------------------------------------------------------------------ resume
    def _resume(self) -> None:
        info_path = self.root / INFO_FILE
        info = json.loads(info_path.read_text())
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
        if (self.root / EPISODES_FILE).exists():
            self.rows = pq.read_table(self.root / EPISODES_FILE).to_pylist()
        remove_stale_temps(self.root)
        referenced = {self.root / self._data_path(row["episode_index"]) for row in self.rows}
        for path in (self.root / "data").rglob("*.parquet"):
            if path not in referenced:
                path.unlink()
        self._write_meta()

    # ------------------------------------------------------------------ public API
    @property
    def num_episodes(self) -> int:
        return len(self.rows)

    def completed_seeds(self) -> set[int]:
        """Seeds of the episodes already in the dataset (episodes without a seed are skipped)."""
        return {int(row["dexvla/seed"]) for row in self.rows if row.get("dexvla/seed") is not None}

    def add_episode(self, episode: Episode) -> int:
        """Validate and append one episode; return its episode_index.

        Nothing becomes visible unless the whole episode is written: the data file goes to a
        temporary name and is renamed, then the episodes table (the commit point) is replaced.
        """
        episode.validate()
        if episode.embodiment != self.spec.name:
            raise ValueError(
                f"episode embodiment {episode.embodiment!r} differs from the dataset's "
                f"{self.spec.name!r} ({self.root})"
            )
        features = self._features_for(episode)
        if self.features is None:
            self.features = features
        elif features != self.features:
            raise ValueError(
                f"episode does not match the dataset's features: {self._diff(features)}"
            )
        index = len(self.rows)
        task_index = self._task_index(episode.task)
        start = sum(int(row["length"]) for row in self.rows)
        table, row = self._episode_table(episode, index, task_index, start)
        atomic_write_parquet(
            self.root / self._data_path(index), table, row_group_size=ROW_GROUP_SIZE
        )
        atomic_write_parquet(self.root / EPISODES_FILE, pa.Table.from_pylist([*self.rows, row]))
        self.rows.append(row)
        self._write_meta()
        return index

    def close(self) -> None:
        """Write info.json and stats.json (atomically); safe to call more than once."""
        if self.features is not None:
            self._write_meta()

    def __enter__(self) -> LeRobotV3Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _data_path(index: int) -> str:
        return DATA_PATH.format(chunk_index=index // CHUNKS_SIZE, file_index=index % CHUNKS_SIZE)

    def _diff(self, features: dict[str, dict[str, Any]]) -> str:
        assert self.features is not None
        keys = sorted(set(features) ^ set(self.features))
        if keys:
            return f"features present in only one of them: {keys}"
        changed = [k for k in features if features[k] != self.features[k]]
        return "; ".join(
            f"{k}: {_describe(features[k])} vs dataset {_describe(self.features[k])}"
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
            features[IMAGE_PREFIX + cam] = {
                "dtype": "image",
                "shape": [height, width, channels],
                "names": ["height", "width", "channels"],
            }
            if cam in episode.camera_fovy:
                fovy = round(float(episode.camera_fovy[cam]), 4)
                features[IMAGE_PREFIX + cam]["info"] = {FOVY_INFO: fovy}
        features[SUBSTEP] = _scalar_feature("string")
        features[REWARD] = _scalar_feature("float32")
        features["timestamp"] = _scalar_feature("float32")
        for name in ("frame_index", "episode_index", "index", "task_index"):
            features[name] = _scalar_feature("int64")
        return features

    def _task_index(self, task: str) -> int:
        if task not in self.tasks:
            atomic_write_parquet(self.root / TASKS_FILE, _tasks_table([*self.tasks, task]))
            self.tasks.append(task)
        return self.tasks.index(task)

    def _episode_table(
        self, episode: Episode, index: int, task_index: int, start: int
    ) -> tuple[pa.Table, dict[str, Any]]:
        length = len(episode)
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
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
            "dexvla/seed": episode.seed,
            "dexvla/success": bool(episode.success),
            "dexvla/task_name": episode.task_name,
            "dexvla/info": json.dumps(episode.info, default=str),
        }
        stats = {STATE: feature_stats(episode.state), ACTION: feature_stats(episode.action)}
        sample = np.unique(np.linspace(0, length - 1, IMAGE_STATS_FRAMES).astype(int))
        for cam in sorted(episode.images):
            frames = episode.images[cam]
            columns[IMAGE_PREFIX + cam] = pa.array(
                [
                    {"bytes": _encode_image(f, self.image_format, self.jpeg_quality), "path": None}
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
            stats[IMAGE_PREFIX + cam] = image_stats
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

    def _write_meta(self) -> None:
        assert self.features is not None
        total_frames = sum(int(row["length"]) for row in self.rows)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.rows),
            "total_frames": total_frames,
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
        if self.rows:
            atomic_write_json(self.root / STATS_FILE, self._dataset_stats())
        atomic_write_json(self.root / INFO_FILE, info)


class _LruCache(OrderedDict):
    """A tiny least-recently-used cache."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def fetch(self, key: Any, load: Any) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = load()
        self[key] = value
        if len(self) > self.capacity:
            self.popitem(last=False)
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
        try:
            self.info = json.loads(info_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{info_path}: not valid JSON ({error})") from None
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
            mapping.get(k[len(IMAGE_PREFIX) :], k[len(IMAGE_PREFIX) :]): k
            for k, f in self.features.items()
            if k.startswith(IMAGE_PREFIX) and f.get("dtype") in ("image", "video")
        }
        self.cameras = tuple(sorted(self.camera_keys))
        self.camera_fovy = {
            cam: float(self.features[key]["info"][FOVY_INFO])
            for cam, key in self.camera_keys.items()
            if FOVY_INFO in (self.features[key].get("info") or {})
        }
        self.tasks = read_tasks(self.root / TASKS_FILE)
        files = sorted((self.root / "meta" / "episodes").rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{self.root}: no episode metadata under meta/episodes/")
        rows: list[dict[str, Any]] = []
        for path in files:
            try:
                rows.extend(pq.read_table(path).to_pylist())
            except (pa.ArrowInvalid, OSError) as error:
                raise ValueError(f"{path}: unreadable episode metadata ({error})") from None
        self.rows = sorted(rows, key=lambda r: int(r["episode_index"]))
        self.lengths = np.array([int(r["length"]) for r in self.rows], dtype=np.int64)
        self._lowdim: dict[int, dict[str, Any]] = {}
        self._reset_handles()

    def _reset_handles(self) -> None:
        self._files: dict[Path, pq.ParquetFile] = {}
        self._offsets: dict[int, int] = {}
        self._groups = _LruCache(64)
        self._videos = _LruCache(4)

    # ------------------------------------------------------------------ properties
    @property
    def num_episodes(self) -> int:
        return len(self.rows)

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def episode_length(self, i: int) -> int:
        return int(self.lengths[i])

    # ------------------------------------------------------------------ files
    def _data_file(self, i: int) -> Path:
        row = self.rows[i]
        template = self.info.get("data_path") or DATA_PATH
        return self.root / template.format(
            chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
        )

    def _parquet(self, path: Path) -> pq.ParquetFile:
        if path not in self._files:
            if not path.exists():
                raise FileNotFoundError(f"{path}: data file missing")
            try:
                self._files[path] = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as error:
                raise ValueError(f"{path}: corrupt data file ({error})") from None
        return self._files[path]

    def _offset(self, i: int) -> int:
        """Row of episode i's first frame inside its data file."""
        if i not in self._offsets:
            path = self._data_file(i)
            index = self._parquet(path).read(columns=["index"]).column("index")
            start = int(self.rows[i]["dataset_from_index"])
            position = pc.index(index, start).as_py()
            if position < 0:
                raise ValueError(
                    f"{path}: episode {self.rows[i]['episode_index']} (index {start}) not found"
                )
            self._offsets[i] = position
        return self._offsets[i]

    def _read_rows(self, i: int, columns: list[str]) -> pa.Table:
        path = self._data_file(i)
        handle = self._parquet(path)
        missing = [c for c in columns if c not in handle.schema_arrow.names]
        if missing:
            raise ValueError(f"{path}: episode {i} has no column(s) {missing}")
        try:
            table = handle.read(columns=columns)
        except (pa.ArrowInvalid, OSError) as error:
            raise ValueError(f"{path}: corrupt data file ({error})") from None
        table = table.slice(self._offset(i), int(self.lengths[i]))
        if table.num_rows != self.lengths[i]:
            raise ValueError(
                f"{path}: episode {i} has {table.num_rows} frames, metadata says {self.lengths[i]}"
            )
        return table

    # ------------------------------------------------------------------ low-dim access
    def lowdim(self, i: int) -> dict[str, Any]:
        """Episode i's `state`, `action` (float32), `substeps`, `task`, `reward` (cached)."""
        if i not in self._lowdim:
            if not 0 <= i < self.num_episodes:
                raise IndexError(f"episode {i} out of range (dataset has {self.num_episodes})")
            names = [STATE, ACTION, "task_index"]
            schema = self._parquet(self._data_file(i)).schema_arrow.names
            extra = [c for c in (SUBSTEP, REWARD) if c in schema]
            table = self._read_rows(i, names + extra)
            where = f"{self._data_file(i)} episode {i}"
            task_index = int(table.column("task_index")[0].as_py())
            if task_index not in self.tasks:
                raise ValueError(f"{where}: task_index {task_index} not in {TASKS_FILE}")
            reward = None
            if REWARD in extra:
                values = table.column(REWARD).to_numpy(zero_copy_only=False).astype(np.float32)
                reward = None if np.isnan(values).all() else values
            self._lowdim[i] = {
                "state": _column_to_numpy(table.column(STATE), self.spec.state_dim, where),
                "action": _column_to_numpy(table.column(ACTION), self.spec.action_dim, where),
                "substeps": (
                    [s or "" for s in table.column(SUBSTEP).to_pylist()]
                    if SUBSTEP in extra
                    else [""] * int(self.lengths[i])
                ),
                "task": self.tasks[task_index],
                "reward": reward,
            }
        return self._lowdim[i]

    # ------------------------------------------------------------------ images
    def image(self, i: int, t: int, cam: str) -> np.ndarray:
        """Frame t of episode i from camera `cam`, uint8 (H, W, 3)."""
        key = self.camera_keys.get(cam)
        if key is None:
            raise KeyError(f"{self.root}: no camera {cam!r}; cameras are {list(self.cameras)}")
        if not 0 <= t < self.lengths[i]:
            raise IndexError(f"frame {t} out of range for episode {i} ({self.lengths[i]} frames)")
        if self.features[key]["dtype"] == "video":
            return self._video_frames(i, key)[t]
        path = self._data_file(i)
        handle = self._parquet(path)
        row = self._offset(i) + t
        group, start = 0, 0
        while start + handle.metadata.row_group(group).num_rows <= row:
            start += handle.metadata.row_group(group).num_rows
            group += 1
        column = self._groups.fetch(
            (path, group, key), lambda: handle.read_row_group(group, columns=[key]).column(0)
        )
        value = column[row - start].as_py()
        if value is None or not value.get("bytes"):
            raise ValueError(f"{path}: episode {i} frame {t}: camera {cam!r} has no image")
        return decode_image(value["bytes"])

    def _video_frames(self, i: int, key: str) -> np.ndarray:
        def load() -> np.ndarray:
            import imageio.v3 as iio

            row = self.rows[i]
            path = self.root / (self.info.get("video_path") or VIDEO_PATH).format(
                video_key=key,
                chunk_index=int(row[f"videos/{key}/chunk_index"]),
                file_index=int(row[f"videos/{key}/file_index"]),
            )
            if not path.exists():
                raise FileNotFoundError(f"{path}: video file missing (episode {i}, {key})")
            first = round(float(row[f"videos/{key}/from_timestamp"]) * self.fps)
            frames = iio.imread(path)
            clip = np.asarray(frames[first : first + int(self.lengths[i])], dtype=np.uint8)
            if len(clip) != self.lengths[i]:
                raise ValueError(
                    f"{path}: episode {i} needs {self.lengths[i]} frames from frame {first}, "
                    f"video has {len(frames)}"
                )
            return clip

        return self._videos.fetch((i, key), load)

    def images(self, i: int, cam: str) -> np.ndarray:
        """All frames of episode i from camera `cam`, uint8 (T, H, W, 3)."""
        key = self.camera_keys[cam]
        if self.features[key]["dtype"] == "video":
            return self._video_frames(i, key)
        column = self._read_rows(i, [key]).column(0).to_pylist()
        frames = []
        for t, value in enumerate(column):
            if value is None or not value.get("bytes"):
                raise ValueError(
                    f"{self._data_file(i)}: episode {i} frame {t}: camera {cam!r} has no image"
                )
            frames.append(decode_image(value["bytes"]))
        return np.stack(frames)

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
        )
        try:
            episode.validate()
        except ValueError as error:
            raise ValueError(f"{self._data_file(i)}: episode {i}: {error}") from None
        return episode

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("_files", "_offsets", "_groups", "_videos"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_handles()


def write_substeps(root: Path, substeps: dict[int, list[str]]) -> None:
    """Replace the `substep` column of the listed episodes (episode_index -> T strings).

    Each data file is rewritten atomically; the `substep` feature is added to info.json if
    missing (after the data files, so a crash never declares a column that is not there).
    """
    dataset = LeRobotV3Dataset(root)
    by_file: dict[Path, list[int]] = {}
    for i in substeps:
        if not 0 <= i < dataset.num_episodes:
            raise IndexError(f"{root}: episode {i} out of range ({dataset.num_episodes})")
        if len(substeps[i]) != dataset.episode_length(i):
            raise ValueError(
                f"{root}: episode {i} has {dataset.episode_length(i)} frames, "
                f"got {len(substeps[i])} sub-steps"
            )
        by_file.setdefault(dataset._data_file(i), []).append(i)
    for path, episodes in by_file.items():
        table = pq.read_table(path)
        metadata = pq.ParquetFile(path).metadata
        group_size = metadata.row_group(0).num_rows if metadata.num_row_groups else None
        column = (
            [s or "" for s in table.column(SUBSTEP).to_pylist()]
            if SUBSTEP in table.column_names
            else [""] * table.num_rows
        )
        for i in episodes:
            start = dataset._offset(i)
            column[start : start + dataset.episode_length(i)] = substeps[i]
        values = pa.array(column, pa.string())
        if SUBSTEP in table.column_names:
            table = table.set_column(table.column_names.index(SUBSTEP), SUBSTEP, values)
        else:
            table = table.append_column(SUBSTEP, values)
        atomic_write_parquet(path, table, row_group_size=group_size)
    if SUBSTEP not in dataset.features:
        info = dict(dataset.info)
        info["features"] = {**dataset.features, SUBSTEP: _scalar_feature("string")}
        atomic_write_json(dataset.root / INFO_FILE, info)
