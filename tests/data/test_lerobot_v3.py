"""LeRobot v3 writer and reader: round trip, resume, crash safety, schema, foreign layouts."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dexvla.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer, read_tasks
from dexvla.data.lerobot_v3 import writer as writer_module


def assert_same_episode(a, b, *, exact_images: bool = True) -> None:
    assert a.embodiment == b.embodiment and a.task == b.task
    assert a.substeps == b.substeps
    np.testing.assert_array_equal(a.state, b.state)
    np.testing.assert_array_equal(a.action, b.action)
    assert sorted(a.images) == sorted(b.images)
    for cam in a.images:
        if exact_images:
            np.testing.assert_array_equal(a.images[cam], b.images[cam])
        else:
            assert np.abs(a.images[cam].astype(int) - b.images[cam]).mean() < 40
    assert (a.seed, a.success, a.task_name, a.info) == (b.seed, b.success, b.task_name, b.info)


def test_round_trip(tmp_path, make_episode):
    episodes = [make_episode(s, length=9 + s) for s in range(3)]
    episodes[2].task = "another task"
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        assert [writer.add_episode(e) for e in episodes] == [0, 1, 2]
    data = LeRobotV3Dataset(tmp_path)
    assert (data.num_episodes, data.num_frames, data.fps) == (3, 9 + 10 + 11, 50)
    assert data.embodiment == "aloha"
    assert data.cameras == ("cam_high", "cam_left_wrist", "cam_right_wrist")
    for i, episode in enumerate(episodes):
        loaded = data.episode(i)
        assert_same_episode(loaded, episode)
        np.testing.assert_array_equal(loaded.reward, episode.reward)
    np.testing.assert_array_equal(data.image(1, 7, "cam_left_wrist"), episodes[1].images[
        "cam_left_wrist"][7])  # fmt: skip
    assert data.lowdim(2)["task"] == "another task"


def test_v3_schema(tmp_path, make_episode):
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        writer.add_episode(make_episode(0))
        writer.add_episode(make_episode(1))
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["robot_type"] == "aloha" and info["fps"] == 50
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, 24, 1)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["splits"] == {"train": "0:2"}
    features = info["features"]
    assert features["observation.state"]["shape"] == [14]
    assert features["observation.images.cam_high"]["dtype"] == "image"
    assert features["observation.images.cam_high"]["shape"] == [8, 10, 3]
    assert features["substep"]["dtype"] == "string"
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in features
    data = pq.read_table(tmp_path / "data/chunk-000/file-001.parquet")
    assert set(features) <= set(data.column_names)
    assert data.column("index").to_pylist() == list(range(12, 24))
    np.testing.assert_allclose(data.column("timestamp").to_numpy()[:3], [0, 0.02, 0.04])
    episodes = pq.read_table(tmp_path / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    for column in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                   "dataset_from_index", "dataset_to_index", "meta/episodes/chunk_index",
                   "meta/episodes/file_index", "stats/action/mean"):  # fmt: skip
        assert column in episodes[1]
    assert episodes[1]["dataset_from_index"] == 12 and episodes[1]["tasks"] == ["pick up the cube"]
    tasks = pq.read_table(tmp_path / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    stats = json.loads((tmp_path / "meta/stats.json").read_text())
    assert stats["action"]["count"] == [24]
    assert np.array(stats["observation.images.cam_high"]["mean"]).shape == (3, 1, 1)


def test_resume_appends_and_reports_seeds(tmp_path, make_episode):
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        writer.add_episode(make_episode(4))
    writer = LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50)
    assert writer.num_episodes == 1 and writer.completed_seeds() == {4}
    assert writer.add_episode(make_episode(7)) == 1
    writer.close()
    data = LeRobotV3Dataset(tmp_path)
    assert data.num_episodes == 2 and data.episode(1).seed == 7
    assert json.loads((tmp_path / "meta/info.json").read_text())["total_frames"] == 24
    with pytest.raises(ValueError, match="embodiment"):
        LeRobotV3Writer(tmp_path, embodiment="sawyer", fps=50)
    with pytest.raises(ValueError, match="fps"):
        LeRobotV3Writer(tmp_path, embodiment="aloha", fps=10)


@pytest.mark.parametrize("fail_on", ["data", "episodes"])
def test_crash_mid_episode_keeps_earlier_episodes(tmp_path, make_episode, monkeypatch, fail_on):
    first = make_episode(0)
    writer = LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50)
    writer.add_episode(first)
    real_write = writer_module.atomic_write_parquet

    def failing(path, table, **kwargs):
        if path.parts[-3] == fail_on:
            real_write(path.with_name(f".{path.name}.crash.tmp"), table, **kwargs)
            raise OSError("disk full")
        real_write(path, table, **kwargs)

    monkeypatch.setattr(writer_module, "atomic_write_parquet", failing)
    with pytest.raises(OSError, match="disk full"):
        writer.add_episode(make_episode(1))
    assert writer.num_episodes == 1
    monkeypatch.setattr(writer_module, "atomic_write_parquet", real_write)
    data = LeRobotV3Dataset(tmp_path)
    assert data.num_episodes == 1
    assert_same_episode(data.episode(0), first)
    resumed = LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50)
    assert not list(tmp_path.rglob("*.tmp*"))
    assert sorted(p.name for p in (tmp_path / "data").rglob("*.parquet")) == ["file-000.parquet"]
    assert resumed.add_episode(make_episode(2)) == 1
    assert LeRobotV3Dataset(tmp_path).episode(1).seed == 2


def test_bad_episode_is_rejected_and_nothing_written(tmp_path, make_episode):
    writer = LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50)
    writer.add_episode(make_episode(0))
    bad = make_episode(1)
    bad.state = bad.state[:-1]
    with pytest.raises(ValueError, match="state"):
        writer.add_episode(bad)
    other_size = make_episode(2, image_hw=(6, 6))
    with pytest.raises(ValueError, match=r"observation\.images\.cam_high"):
        writer.add_episode(other_size)
    missing_cam = make_episode(3)
    del missing_cam.images["cam_left_wrist"]
    with pytest.raises(ValueError, match="cam_left_wrist"):
        writer.add_episode(missing_cam)
    wrong = make_episode(4, embodiment="sawyer")
    with pytest.raises(ValueError, match="sawyer"):
        writer.add_episode(wrong)
    with pytest.raises(KeyError, match="unknown embodiment"):
        LeRobotV3Writer(tmp_path / "new", embodiment="robot-x", fps=50)
    assert LeRobotV3Dataset(tmp_path).num_episodes == 1
    assert len(list((tmp_path / "data").rglob("*.parquet"))) == 1


def _stored_image_bytes(root) -> list[bytes]:
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    return [value["bytes"] for value in table.column("observation.images.cam_high").to_pylist()]


def test_jpeg_images(tmp_path, make_episode):
    episode = make_episode(0, image_hw=(16, 16))
    episode.images = {k: np.full_like(v, 90) for k, v in episode.images.items()}
    jpeg, png = tmp_path / "jpeg", tmp_path / "png"
    with LeRobotV3Writer(jpeg, embodiment="aloha", fps=50, image_format="jpeg") as writer:
        writer.add_episode(episode)
    with LeRobotV3Writer(png, embodiment="aloha", fps=50) as writer:
        writer.add_episode(episode)
    assert_same_episode(LeRobotV3Dataset(jpeg).episode(0), episode, exact_images=False)
    stored = _stored_image_bytes(jpeg)
    assert len(stored) == len(episode) and all(b[:3] == b"\xff\xd8\xff" for b in stored)
    assert all(b[:8] == b"\x89PNG\r\n\x1a\n" for b in _stored_image_bytes(png))
    for root, image_format in ((jpeg, "jpeg"), (png, "png")):
        info = json.loads((root / "meta/info.json").read_text())
        assert info["dexvla"]["image_format"] == image_format
    with pytest.raises(ValueError, match="image_format must be one of"):
        LeRobotV3Writer(tmp_path / "gif", embodiment="aloha", fps=50, image_format="gif")


def test_reader_errors_name_the_file(tmp_path, make_episode):
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        writer.add_episode(make_episode(0))
    data_file = tmp_path / "data/chunk-000/file-000.parquet"
    data_file.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"file-000\.parquet"):
        LeRobotV3Dataset(tmp_path).episode(0)
    data_file.unlink()
    with pytest.raises(FileNotFoundError, match=r"file-000\.parquet"):
        LeRobotV3Dataset(tmp_path).lowdim(0)
    info = json.loads((tmp_path / "meta/info.json").read_text())
    info["dexvla"]["embodiment"] = "robot-x"
    info["robot_type"] = "robot-x"
    (tmp_path / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(KeyError, match=r"info\.json.*robot-x"):
        LeRobotV3Dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a LeRobot dataset"):
        LeRobotV3Dataset(tmp_path / "nothing")


def _foreign_dataset(root, episodes, fps=50):
    """A dataset laid out the way LeRobot writes it: several episodes in one data file,
    variable-length list columns, pandas-indexed tasks, the top camera as mp4 video."""
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    (root / "videos/observation.images.top/chunk-000").mkdir(parents=True)
    frames, rows, start, video = [], [], 0, []
    for e, episode in enumerate(episodes):
        length = len(episode)
        for t in range(length):
            frames.append({
                "observation.state": episode.state[t].tolist(),
                "action": episode.action[t].tolist(),
                "timestamp": t / fps, "frame_index": t, "episode_index": e,
                "index": start + t, "task_index": 0,
            })  # fmt: skip
        video.append(episode.images["cam_high"])
        rows.append({
            "episode_index": e, "tasks": [episode.task], "length": length,
            "data/chunk_index": 0, "data/file_index": 0,
            "dataset_from_index": start, "dataset_to_index": start + length,
            "videos/observation.images.top/chunk_index": 0,
            "videos/observation.images.top/file_index": 0,
            "videos/observation.images.top/from_timestamp": start / fps,
            "videos/observation.images.top/to_timestamp": (start + length) / fps,
            "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
        })  # fmt: skip
        start += length
    pq.write_table(pa.Table.from_pylist(frames), root / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(
        pa.table({"task_index": [0], "__index_level_0__": [episodes[0].task]}),
        root / "meta/tasks.parquet",
    )
    iio.imwrite(
        root / "videos/observation.images.top/chunk-000/file-000.mp4",
        np.concatenate(video),
        fps=fps,
        codec="libx264",
        quality=10,
        macro_block_size=1,
    )
    h, w = episodes[0].images["cam_high"].shape[1:3]
    info = {
        "codebase_version": "v3.0", "robot_type": "aloha", "fps": fps,
        "total_episodes": len(episodes), "total_frames": start, "total_tasks": 1,
        "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            "observation.state": {"dtype": "float32", "shape": [14], "names": None},
            "action": {"dtype": "float32", "shape": [14], "names": None},
            "observation.images.top": {
                "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
            },
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }  # fmt: skip
    (root / "meta/info.json").write_text(json.dumps(info))


def test_reads_lerobot_written_layout(tmp_path, make_episode):
    episodes = [make_episode(s, length=10, image_hw=(16, 16)) for s in range(2)]
    for e in episodes:
        e.images["cam_high"] = np.full_like(e.images["cam_high"], 60 + 100 * (e.seed or 0))
    _foreign_dataset(tmp_path, episodes)
    data = LeRobotV3Dataset(tmp_path, camera_map={"top": "cam_high"})
    assert (data.num_episodes, data.num_frames, data.cameras) == (2, 20, ("cam_high",))
    low = data.lowdim(1)
    np.testing.assert_allclose(low["state"], episodes[1].state, rtol=1e-6)
    np.testing.assert_allclose(low["action"], episodes[1].action, rtol=1e-6)
    assert low["task"] == "pick up the cube" and low["substeps"] == [""] * 10
    frame = data.image(1, 3, "cam_high")
    assert frame.shape == (16, 16, 3) and abs(float(frame.mean()) - 160) < 8
    assert abs(float(data.images(0, "cam_high").mean()) - 60) < 8
    full = iio.imread(tmp_path / "videos/observation.images.top/chunk-000/file-000.mp4")
    np.testing.assert_array_equal(frame, full[10 + 3])  # episode 1 starts at 10 / fps seconds
    np.testing.assert_array_equal(data.images(1, "cam_high"), full[10:20])
    assert read_tasks(tmp_path / "meta/tasks.parquet") == {0: "pick up the cube"}


def test_frame_missing_a_camera_is_reported(tmp_path, make_episode):
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        writer.add_episode(make_episode(0))
    path = tmp_path / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    key = "observation.images.cam_left_wrist"
    images = table.column(key).to_pylist()
    images[3] = None
    table = table.set_column(
        table.column_names.index(key), key, pa.array(images, table.schema.field(key).type)
    )
    pq.write_table(table, path)
    data = LeRobotV3Dataset(tmp_path)
    with pytest.raises(
        ValueError, match=r"episode 0 frame 3: camera 'cam_left_wrist' has no image"
    ):
        data.image(0, 3, "cam_left_wrist")
    with pytest.raises(ValueError, match=r"file-000\.parquet: episode 0 frame 3"):
        data.episode(0)


def test_camera_fovy_is_recorded_and_a_mismatch_refused(tmp_path, make_episode):
    fovy = {"cam_high": 50.0, "cam_left_wrist": 75.0}
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        writer.add_episode(dataclasses.replace(make_episode(0), camera_fovy=fovy))
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert info["features"]["observation.images.cam_high"]["info"] == {"camera.fovy": 50.0}
    assert "info" not in info["features"]["observation.images.cam_right_wrist"]
    data = LeRobotV3Dataset(tmp_path)
    assert data.camera_fovy == fovy and data.episode(0).camera_fovy == fovy
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        older = dataclasses.replace(make_episode(1), camera_fovy={**fovy, "cam_high": 78.0})
        with pytest.raises(ValueError, match=r"at 78\.0 deg field of view vs dataset .* at 50\.0"):
            writer.add_episode(older)
    assert LeRobotV3Dataset(tmp_path).num_episodes == 1


def test_adding_an_episode_writes_only_that_episode(tmp_path, make_episode, monkeypatch):
    writer = LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50)
    for seed in range(3):
        writer.add_episode(make_episode(seed))
    written = []
    real_parquet, real_json = writer_module.atomic_write_parquet, writer_module.atomic_write_json

    def parquet(path, table, **kwargs):
        written.append((path.relative_to(tmp_path).as_posix(), table.num_rows))
        real_parquet(path, table, **kwargs)

    def json_file(path, value, **kwargs):
        written.append((path.relative_to(tmp_path).as_posix(), None))
        real_json(path, value, **kwargs)

    monkeypatch.setattr(writer_module, "atomic_write_parquet", parquet)
    monkeypatch.setattr(writer_module, "atomic_write_json", json_file)
    writer.add_episode(make_episode(3))
    assert written == [
        ("data/chunk-000/file-003.parquet", 12),
        ("meta/episodes/chunk-000/file-003.parquet", 1),
    ]
    assert LeRobotV3Dataset(tmp_path).num_episodes == 4  # readable before close()
    written.clear()
    writer.close()
    assert written == [
        ("meta/episodes/chunk-000/file-000.parquet", 4),
        ("meta/stats.json", None),
        ("meta/info.json", None),
    ]
    files = sorted(p.name for p in (tmp_path / "meta/episodes").rglob("*.parquet"))
    assert files == ["file-000.parquet"]
    written.clear()
    writer.close()
    assert written == []


KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from conftest import synthetic_episode
from dexvla.data.lerobot_v3 import LeRobotV3Writer
writer = LeRobotV3Writer(sys.argv[1], embodiment="aloha", fps=50)
for seed in range(3):
    writer.add_episode(synthetic_episode(seed))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_writer_loses_nothing_and_resumes_to_a_closed_dataset(tmp_path, make_episode):
    killed, closed = tmp_path / "killed", tmp_path / "closed"
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(killed), tests_dir],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    data = LeRobotV3Dataset(killed)
    assert data.num_episodes == 3
    for seed in range(3):
        assert_same_episode(data.episode(seed), make_episode(seed))
    with LeRobotV3Writer(killed, embodiment="aloha", fps=50) as writer:
        assert writer.completed_seeds() == {0, 1, 2}
        writer.add_episode(make_episode(3))
    with LeRobotV3Writer(closed, embodiment="aloha", fps=50) as writer:
        for seed in range(4):
            writer.add_episode(make_episode(seed))
    files = sorted(p.relative_to(closed) for p in closed.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(killed) for p in killed.rglob("*") if p.is_file())
    for path in files:
        assert (killed / path).read_bytes() == (closed / path).read_bytes(), path


def test_rows_left_in_two_files_are_read_once(tmp_path, make_episode):
    writer = LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50)
    for seed in range(3):
        writer.add_episode(make_episode(seed))
    # killed while consolidating: the full table is in place, the one-row files not yet gone
    pq.write_table(
        pa.Table.from_pylist(writer.rows), tmp_path / "meta/episodes/chunk-000/file-000.parquet"
    )
    data = LeRobotV3Dataset(tmp_path)
    assert data.num_episodes == 3 and data.num_frames == 36
    assert LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50).num_episodes == 3
    assert LeRobotV3Dataset(tmp_path).episode(2).seed == 2


def _with_env_state(episode, width=3, seed=0):
    positions = np.random.default_rng(seed).normal(size=(len(episode), width))
    return dataclasses.replace(episode, env_state=positions.astype(np.float32))


def test_env_state_round_trips_exactly_with_its_feature_and_stats(tmp_path, make_episode):
    episodes = [_with_env_state(make_episode(s, length=7 + s), seed=s) for s in range(2)]
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        for episode in episodes:
            writer.add_episode(episode)
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert info["features"]["observation.environment_state"] == {
        "dtype": "float32", "shape": [3], "names": ["env_0", "env_1", "env_2"]}  # fmt: skip
    stats = json.loads((tmp_path / "meta/stats.json").read_text())
    everything = np.concatenate([e.env_state for e in episodes])
    np.testing.assert_allclose(stats["observation.environment_state"]["mean"],
                               everything.mean(0), atol=1e-5)  # fmt: skip
    data = LeRobotV3Dataset(tmp_path)
    assert data.env_state_dim == 3
    for i, episode in enumerate(episodes):
        loaded = data.lowdim(i)["env_state"]
        assert loaded.dtype == np.float32
        np.testing.assert_array_equal(loaded, episode.env_state)
        np.testing.assert_array_equal(data.episode(i).env_state, episode.env_state)


def test_dataset_without_env_state_reads_none(tmp_path, make_episode):
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        writer.add_episode(make_episode(0))
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert "observation.environment_state" not in info["features"]
    data = LeRobotV3Dataset(tmp_path)
    assert data.env_state_dim is None
    assert data.lowdim(0)["env_state"] is None and data.episode(0).env_state is None


def test_env_state_presence_or_width_mismatch_is_refused(tmp_path, make_episode):
    with LeRobotV3Writer(tmp_path / "with", embodiment="aloha", fps=50) as writer:
        writer.add_episode(_with_env_state(make_episode(0)))
        with pytest.raises(ValueError, match=r"only one of them: \['observation\.environment_st"):
            writer.add_episode(make_episode(1))
        with pytest.raises(ValueError, match=r"observation\.environment_state: \[6\] vs .*\[3\]"):
            writer.add_episode(_with_env_state(make_episode(2), width=6))
    with LeRobotV3Writer(tmp_path / "without", embodiment="aloha", fps=50) as writer:
        writer.add_episode(make_episode(0))
        with pytest.raises(ValueError, match=r"only one of them: \['observation\.environment_st"):
            writer.add_episode(_with_env_state(make_episode(1)))
    assert LeRobotV3Dataset(tmp_path / "with").num_episodes == 1
    assert LeRobotV3Dataset(tmp_path / "without").num_episodes == 1
