"""Atomic writes: readable files, no half-written file, the old content kept on failure."""

import os
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dexvla.io import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_parquet,
    remove_stale_temps,
)


def test_written_files_are_complete_and_readable_by_others(tmp_path):
    path = tmp_path / "sub" / "report.md"
    atomic_write_bytes(path, b"hello")
    assert path.read_bytes() == b"hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not remove_stale_temps(tmp_path)


def test_atomic_directories_and_their_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        with atomic_directory(tmp_path / "ckpt") as staging:
            atomic_write_bytes(staging / "model.safetensors", b"weights")
            (staging / "plain.json").write_text("{}")
    finally:
        os.umask(previous)
    directory = tmp_path / "ckpt"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert stat.S_IMODE((directory / "model.safetensors").stat().st_mode) == 0o640
    assert stat.S_IMODE((directory / "plain.json").stat().st_mode) == 0o640


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "data.parquet"
    table = pa.table({"x": [1, 2, 3]})
    atomic_write_parquet(path, table)
    with pytest.raises(Exception, match=r"(?i)compression"):  # fails inside the temp file write
        atomic_write_parquet(path, pa.table({"x": [9]}), compression="no-such-codec")
    assert pq.read_table(path).equals(table)
    assert [p.name for p in tmp_path.iterdir()] == ["data.parquet"]


def test_one_line_joins_a_library_error_and_drops_a_key_errors_quotes():
    from dexvla.io import one_line

    assert one_line(OSError("Couldn't deserialize thrift\nDeserializing page header failed.\n"))  \
        == "Couldn't deserialize thrift; Deserializing page header failed."  # fmt: skip
    assert one_line(KeyError("no camera 'top'")) == "no camera 'top'"
    assert one_line(ValueError()) == "ValueError"


def test_reading_names_the_file_in_one_line(tmp_path):
    from dexvla.io import reading

    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1 but not really")
    with pytest.raises(ValueError) as error, reading(path, "corrupt data file"):
        pq.read_table(path)
    message = str(error.value)
    assert message.startswith(f"{path}: corrupt data file (") and "\n" not in message
    with pytest.raises(FileNotFoundError, match=r"missing\.parquet"), reading(tmp_path / "x"):
        pq.read_table(tmp_path / "missing.parquet")
    with pytest.raises(KeyError), reading(path, errors=(OSError,)):
        raise KeyError("not a read error: left alone")


def test_read_json_names_the_file(tmp_path):
    from dexvla.io import read_json

    path = tmp_path / "info.json"
    path.write_text('{"fps": 5')
    with pytest.raises(ValueError, match=r"dataset info .*info\.json is not valid JSON"):
        read_json(path, "dataset info")
    with pytest.raises(FileNotFoundError, match=r"nothing\.json does not exist"):
        read_json(tmp_path / "nothing.json")
