"""Corrupt or wrong LeRobot v3 files: one-line errors naming the file, nothing else changed."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dexvla.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer
from dexvla.schema import STATE

DATA = "data/chunk-000/file-000.parquet"


def hashes(root, skip) -> dict[str, str]:
    """sha256 of every file under root but `skip`."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != skip
    }


@pytest.fixture
def dataset(tmp_path, make_episode):
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        for seed in range(2):
            writer.add_episode(make_episode(seed))
    return tmp_path


def overwrite_page(path, column: str) -> None:
    """Overwrite the header of `column`'s first data page (the footer stays readable)."""
    group = pq.ParquetFile(path).metadata.row_group(0)
    (chunk,) = [
        group.column(c)
        for c in range(group.num_columns)
        if group.column(c).path_in_schema.split(".list")[0] == column
    ]
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset : chunk.data_page_offset + 32] = b"\x5a" * 32
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("column", ["index", STATE])
def test_a_corrupt_page_is_one_line_naming_the_file(dataset, column):
    path = dataset / DATA
    overwrite_page(path, column)
    before = hashes(dataset, path)
    with pytest.raises(ValueError) as error:
        LeRobotV3Dataset(dataset).lowdim(0)
    message = str(error.value)
    assert message.startswith(f"{path}: corrupt data file (") and "\n" not in message
    assert hashes(dataset, path) == before


@pytest.mark.parametrize(
    ("name", "problem"),
    [("meta/tasks.parquet", "unreadable tasks table"),
     ("meta/episodes/chunk-000/file-000.parquet", "unreadable episode metadata")],
)  # fmt: skip
def test_a_truncated_metadata_table_is_one_line_naming_it(dataset, name, problem):
    path = dataset / name
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError) as error:
        LeRobotV3Dataset(dataset)
    assert str(error.value).startswith(f"{path}: {problem}") and "\n" not in str(error.value)


def test_nan_state_is_an_error_naming_the_file_and_column(dataset):
    path = dataset / DATA
    table = pq.read_table(path)
    rows = table.column(STATE).to_pylist()
    rows[3] = [float("nan")] * len(rows[3])
    column = table.column_names.index(STATE)
    pq.write_table(table.set_column(column, STATE, pa.array(rows, table.schema.field(STATE).type)),
                   path)  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(f"{path} episode 0 column '{STATE}': NaN")):
        LeRobotV3Dataset(dataset).lowdim(0)
    np.testing.assert_array_equal(LeRobotV3Dataset(dataset).lowdim(1)["state"].shape, (12, 14))
