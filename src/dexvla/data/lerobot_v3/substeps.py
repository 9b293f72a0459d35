"""Replace the per-frame `substep` column of episodes already written (the annotator's
write-back)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dexvla.data.lerobot_v3.format import INFO_FILE, scalar_feature
from dexvla.data.lerobot_v3.reader import LeRobotV3Dataset
from dexvla.io import atomic_write_json, atomic_write_parquet
from dexvla.schema import SUBSTEP


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
        by_file.setdefault(dataset.data_file(i), []).append(i)
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
            start = dataset.frame_offset(i)
            column[start : start + dataset.episode_length(i)] = substeps[i]
        values = pa.array(column, pa.string())
        if SUBSTEP in table.column_names:
            table = table.set_column(table.column_names.index(SUBSTEP), SUBSTEP, values)
        else:
            table = table.append_column(SUBSTEP, values)
        atomic_write_parquet(path, table, row_group_size=group_size)
    if SUBSTEP not in dataset.features:
        info = dict(dataset.info)
        info["features"] = {**dataset.features, SUBSTEP: scalar_feature("string")}
        atomic_write_json(dataset.root / INFO_FILE, info)
