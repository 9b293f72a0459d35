"""Atomic file writes: every saved artefact goes to a temporary name, then `os.replace`.

A crash leaves either the old file or the new one, never a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TMP_SUFFIX = ".tmp"


def _temp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The target's suffix stays last, for writers that pick a format from the name (ffmpeg).
    suffix = TMP_SUFFIX + path.suffix
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    os.chmod(name, 0o644)  # mkstemp's 0600 would make shared results unreadable to others
    return Path(name)


def _commit(temp: Path, path: Path) -> None:
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temp)` on a temporary file next to `path`, then rename it over `path`."""
    temp = _temp_path(path)
    try:
        write(temp)
        _commit(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    atomic_write(path, lambda temp: temp.write_bytes(data))


def atomic_write_json(path: Path, value: Any) -> None:
    """Write `value` as indented UTF-8 JSON to `path` atomically."""
    atomic_write_bytes(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())


def atomic_write_parquet(path: Path, table: pa.Table, **kwargs: Any) -> None:
    """Write a pyarrow table to `path` atomically (kwargs go to `pq.write_table`)."""
    atomic_write(path, lambda temp: pq.write_table(table, temp, **kwargs))


def remove_stale_temps(root: Path) -> list[Path]:
    """Delete temporary files a crashed writer left under `root`; return what was removed."""
    removed = [p for p in root.rglob(f".*{TMP_SUFFIX}*") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
