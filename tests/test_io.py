"""Atomic writes: readable files, no half-written file, the old content kept on failure."""

import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dexvla.io import atomic_write_bytes, atomic_write_parquet, remove_stale_temps


def test_written_files_are_complete_and_readable_by_others(tmp_path):
    path = tmp_path / "sub" / "report.md"
    atomic_write_bytes(path, b"hello")
    assert path.read_bytes() == b"hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not remove_stale_temps(tmp_path)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "data.parquet"
    table = pa.table({"x": [1, 2, 3]})
    atomic_write_parquet(path, table)
    with pytest.raises(Exception, match=r"(?i)compression"):  # fails inside the temp file write
        atomic_write_parquet(path, pa.table({"x": [9]}), compression="no-such-codec")
    assert pq.read_table(path).equals(table)
    assert [p.name for p in tmp_path.iterdir()] == ["data.parquet"]
