"""The LeRobot v3.0 layout: file paths, constants, feature descriptions, the tasks and episodes
tables, shared by the writer, the reader and the sub-step patcher.

Layout (LeRobot `CODEBASE_VERSION = "v3.0"`)::

    meta/info.json                 schema (features), fps, robot_type, path templates, totals
    meta/stats.json                per-feature min/max/mean/std/count (+ quantiles)
    meta/tasks.parquet             task string -> task_index (pandas index "task")
    meta/episodes/chunk-000/file-000.parquet   one row per episode (offsets, stats, ...)
    data/chunk-XXX/file-YYY.parquet            frames
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dexvla.io import is_temp, reading

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = EPISODES_DIR + "/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_FILE = EPISODES_PATH.format(chunk_index=0, file_index=0)
INFO_FILE = "meta/info.json"
STATS_FILE = "meta/stats.json"
TASKS_FILE = "meta/tasks.parquet"
ROW_GROUP_SIZE = 32  # frames per data-file row group at most
ROW_GROUP_IMAGE_BYTES = 512 * 1024  # about this much of one camera's image bytes per row group
FOVY_INFO = "camera.fovy"  # an image feature's `info` entry: vertical field of view, degrees

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def chunked(template: str, index: int) -> str:
    """`template` (DATA_PATH, EPISODES_PATH) filled for the file numbered `index`."""
    return template.format(chunk_index=index // CHUNKS_SIZE, file_index=index % CHUNKS_SIZE)


def row_group_size(table: pa.Table) -> int:
    """Frames per row group for an episode's data table: a frame read reads one row group of
    its camera's column, so the group holds about ROW_GROUP_IMAGE_BYTES of the largest camera's
    images (one frame at 640x480 PNG, ROW_GROUP_SIZE frames for small images or none)."""
    if table.num_rows == 0:
        return ROW_GROUP_SIZE
    largest = max(
        (
            pc.sum(pc.binary_length(column.combine_chunks().field("bytes"))).as_py() or 0
            for column, field in zip(table.columns, table.schema, strict=True)
            if field.type == IMAGE_STRUCT
        ),
        default=0,
    )
    per_frame = largest / table.num_rows
    return int(np.clip(ROW_GROUP_IMAGE_BYTES // max(per_frame, 1), 1, ROW_GROUP_SIZE))


def scalar_feature(dtype: str) -> dict[str, Any]:
    """The info.json description of a one-value-per-frame column."""
    return {"dtype": dtype, "shape": [1], "names": None}


def describe_feature(feature: dict[str, Any]) -> str:
    """A feature's shape, and its camera field of view where recorded (for mismatch errors)."""
    fovy = (feature.get("info") or {}).get(FOVY_INFO)
    return f"{feature.get('shape')}" + ("" if fovy is None else f" at {fovy} deg field of view")


def tasks_table(tasks: list[str]) -> pa.Table:
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
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: tasks table missing")
    with reading(path, "unreadable tasks table"):
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


def episode_files(root: Path) -> list[Path]:
    """The episodes-table files under `root`/meta/episodes, without interrupted writes' temps."""
    return sorted(p for p in (Path(root) / EPISODES_DIR).rglob("*.parquet") if not is_temp(p))


def read_episode_rows(root: Path) -> list[dict[str, Any]]:
    """Every episode's metadata row, by episode_index, from all episodes-table files.

    A row found in two files (the consolidated table and the one-row file of an episode added
    since, when a writer was killed while consolidating) is read once.
    """
    rows: dict[int, dict[str, Any]] = {}
    for path in episode_files(root):
        with reading(path, "unreadable episode metadata"):
            table = pq.read_table(path)
        for row in table.to_pylist():
            rows.setdefault(int(row["episode_index"]), row)
    return [rows[index] for index in sorted(rows)]


def column_to_numpy(table: pa.Table, name: str, width: int, where: str) -> np.ndarray:
    """A fixed- or variable-size list column of finite numbers -> float32 (N, width); errors
    name `where` (the file and episode) and the column."""
    array = table.column(name).combine_chunks()
    where = f"{where} column {name!r}"
    if not (pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type)):
        raise ValueError(f"{where}: expected a list column, got {array.type}")
    flat = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if flat.size != len(array) * width:
        raise ValueError(
            f"{where}: expected {width} values per frame, got {flat.size} for {len(array)} frames"
        )
    if not np.isfinite(flat).all():
        raise ValueError(f"{where}: NaN or infinite values")
    return flat.reshape(len(array), width)
