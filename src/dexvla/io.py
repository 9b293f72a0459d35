"""Atomic files and directories: the one way every artefact of the project is saved.

A file goes to a temporary sibling and is renamed over its target (`os.replace`); a directory
(a checkpoint, a stage's export) is filled in a temporary sibling directory and swapped into
place once complete. A crash at any moment leaves the old artefact or the new one, never a
half-written one; `remove_stale_temps` deletes what a crashed writer left behind. `read_json`
is the one JSON reader: its errors name the file; `reading` gives the other readers (parquet,
HDF5, video) the same one-line errors naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
STAGING_MARK = ".tmp-"  # in the name of a directory being filled
RETIRED_MARK = ".old-"  # in the name of a directory being replaced
# A full disk, a full quota, a file-size limit: a write failed for want of space.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust writers (safetensors) say errno


def _umask() -> int:
    """The process's umask, read without changing it where Linux reports it (setting it to read
    it would briefly give other threads' new files mode 0666)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _shareable(path: str | Path, mode: int) -> None:
    """Give a temporary file (0666) or directory (0777) the mode a plain create would have:
    mkstemp's 0600 and mkdtemp's 0700 would make shared results unreadable to others."""
    os.chmod(path, mode & ~_umask())


def _temp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The target's suffix stays last, for writers that pick a format from the name (ffmpeg).
    suffix = TMP_SUFFIX + path.suffix
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    _shareable(name, 0o666)
    return Path(name)


def fsync_file(path: Path) -> None:
    """Flush a file's content to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temp)` on a temporary file next to `path`, then rename it over `path`."""
    path = Path(path)
    temp = _temp_path(path)
    try:
        write(temp)
        fsync_file(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    atomic_write(path, lambda temp: temp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, value: Any, *, sort_keys: bool = False) -> None:
    """Write `value` as indented UTF-8 JSON to `path` atomically."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=sort_keys) + "\n"
    atomic_write_text(path, text)


def atomic_write_parquet(path: Path, table: Any, **kwargs: Any) -> None:
    """Write a pyarrow table to `path` atomically (kwargs go to `pq.write_table`)."""
    import pyarrow.parquet as pq  # only the data writers need pyarrow

    atomic_write(path, lambda temp: pq.write_table(table, temp, **kwargs))


def no_space_errno(error: BaseException) -> int | None:
    """The errno of a write that failed for want of space (None for any other error): an
    `OSError`'s, or the `os error N` in the message of a Rust writer's error (safetensors)."""
    if isinstance(error, OSError):
        code = error.errno
    else:
        match = _RUST_OS_ERROR.search(str(error))
        code = int(match.group(1)) if match else None
    return code if code in NO_SPACE_ERRNOS else None


def one_line(error: BaseException) -> str:
    """An exception's message on one line (pyarrow's and h5py's span several; a KeyError's
    without the quotes its str adds)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


@contextmanager
def reading(
    path: Path,
    problem: str = "unreadable file",
    errors: tuple[type[Exception], ...] = (OSError, ValueError),
) -> Iterator[None]:
    """Re-raise what a third-party reader raises on a corrupt or truncated file (pyarrow: OSError
    or ValueError; h5py: OSError, so `errors=(OSError,)` where the block raises its own
    ValueErrors) as one ValueError line naming `path` and the `problem`."""
    try:
        yield
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path}: missing ({one_line(error)})") from None
    except errors as error:
        raise ValueError(f"{path}: {problem} ({one_line(error)})") from None


def read_json(path: Path, what: str = "file") -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {path} is not valid JSON: {one_line(error)}") from None
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be read: {one_line(error)}") from None


@contextmanager
def atomic_directory(directory: Path) -> Iterator[Path]:
    """Fill the yielded staging directory; on success it replaces `directory` whole.

    Every file is fsynced before the swap; an older `directory` is moved aside first and
    deleted after, so a crash leaves the old directory, the new one, or a staging directory
    that `remove_stale_temps` recognises. On an exception the staging directory is removed.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{directory.name}{STAGING_MARK}"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=directory.parent))
    _shareable(staging, 0o777)
    try:
        yield staging
        for path in staging.rglob("*"):
            if path.is_file():
                fsync_file(path)
        fsync_dir(staging)
        if directory.exists():
            retired = directory.parent / f".{directory.name}{RETIRED_MARK}{staging.name[-8:]}"
            os.replace(directory, retired)
            os.replace(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, directory)
        fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def is_temp(path: Path) -> bool:
    """Whether `path` is a temporary file or directory of an interrupted atomic write."""
    name = path.name
    if not name.startswith("."):
        return False
    if path.is_dir():
        return STAGING_MARK in name or RETIRED_MARK in name
    return TMP_SUFFIX in name


def remove_stale_temps(root: Path, *, recursive: bool = True) -> list[Path]:
    """Delete what crashed atomic writes left under `root`; return what was removed.

    A directory moved aside whose replacement never arrived is moved back instead.

    Call it only where no other process is writing under `root` at the same time.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    candidates = root.rglob(".*") if recursive else root.glob(".*")
    removed = sorted(path for path in candidates if is_temp(path))
    for path in removed:
        target = path.parent / path.name[1:].rpartition(RETIRED_MARK)[0]
        if path.is_dir() and RETIRED_MARK in path.name and not target.exists():
            os.replace(path, target)  # a crash between the two renames: the old one stays
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed
