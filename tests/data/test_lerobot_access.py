"""Random frame access in LeRobot v3 data files: a frame read reads about one frame."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow.parquet as pq

from dexvla.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer, reader
from dexvla.data.lerobot_v3.format import ROW_GROUP_IMAGE_BYTES, ROW_GROUP_SIZE
from dexvla.schema import EMBODIMENT, ENV_STATE, STATE, TASK, image_key

DATA_FILE = "data/chunk-000/file-000.parquet"


def test_row_groups_hold_about_one_large_frame(tmp_path, make_episode):
    large = make_episode(0, length=7, image_hw=(240, 320))  # noise: ~230 KB of PNG per frame
    with LeRobotV3Writer(tmp_path / "large", embodiment="aloha", fps=50) as writer:
        writer.add_episode(large)
    metadata = pq.ParquetFile(tmp_path / "large" / DATA_FILE).metadata
    group = metadata.row_group(0).num_rows
    png = pq.read_table(tmp_path / "large" / DATA_FILE).column("observation.images.cam_high")
    per_frame = sum(len(v["bytes"]) for v in png.to_pylist()) / 7
    assert group == max(1, int(ROW_GROUP_IMAGE_BYTES // per_frame)) and group <= 2
    data = LeRobotV3Dataset(tmp_path / "large")
    for t in (6, 0, 3):
        np.testing.assert_array_equal(data.image(0, t, "cam_high"), large.images["cam_high"][t])
    with LeRobotV3Writer(tmp_path / "small", embodiment="aloha", fps=50) as writer:
        writer.add_episode(make_episode(0, length=40))
    metadata = pq.ParquetFile(tmp_path / "small" / DATA_FILE).metadata
    assert metadata.row_group(0).num_rows == ROW_GROUP_SIZE


def test_files_with_other_row_groups_read_the_same(tmp_path, make_episode):
    """Older files (32 frames a group) and foreign ones (any size) read frame for frame."""
    episodes = [make_episode(s, length=23) for s in range(2)]
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        for episode in episodes:
            writer.add_episode(episode)
    path = tmp_path / DATA_FILE
    for size in (5, 32, 1):
        pq.write_table(pq.read_table(path), path, row_group_size=size)
        data = LeRobotV3Dataset(tmp_path)
        for t in (22, 0, 5, 4, 11):
            frame = data.image(0, t, "cam_right_wrist")
            np.testing.assert_array_equal(frame, episodes[0].images["cam_right_wrist"][t])
        np.testing.assert_array_equal(data.images(1, "cam_high"), episodes[1].images["cam_high"])
        copy = pickle.loads(pickle.dumps(data))  # what a DataLoader worker gets: no open handles
        np.testing.assert_array_equal(
            copy.image(1, 9, "cam_high"), episodes[1].images["cam_high"][9]
        )


def test_row_groups_read_again_come_from_memory_within_the_byte_budget(
    tmp_path, make_episode, monkeypatch
):
    """Random training reads revisit groups: each is read once while it fits the budget."""
    episode = make_episode(0, length=40)  # two row groups: frames 0-31 and 32-39
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        writer.add_episode(episode)
    reads: list[int] = []
    read_row_group = pq.ParquetFile.read_row_group

    def counted(self, group, *args, **kwargs):
        reads.append(group)
        return read_row_group(self, group, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    order = (0, 39, 1, 38, 2)
    for budget, expected in ((reader.GROUP_CACHE_BYTES, [0, 1]), (1, [0, 1, 0, 1, 0])):
        monkeypatch.setattr(reader, "GROUP_CACHE_BYTES", budget)
        reads.clear()
        data = LeRobotV3Dataset(tmp_path)
        for t in order:
            frame = data.image(0, t, "cam_high")
            np.testing.assert_array_equal(frame, episode.images["cam_high"][t])
        assert reads == expected  # a budget of one byte keeps only the newest group


def test_an_observation_is_the_recorded_frame_with_state_task_and_embodiment(
    tmp_path, make_episode
):
    episode = make_episode(0, length=12)
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        writer.add_episode(episode)
    data = LeRobotV3Dataset(tmp_path)
    obs = data.observation(0, 7)
    for cam in data.cameras:
        np.testing.assert_array_equal(obs[image_key(cam)], episode.images[cam][7])
    np.testing.assert_array_equal(obs[STATE], episode.state[7])
    assert obs[TASK] == episode.task and obs[EMBODIMENT] == "aloha"
    assert ENV_STATE not in obs  # this episode records no object positions
