"""ACT / DexVLA HDF5 episodes: raw and JPEG images, camera names, bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from dexvla.data.act_hdf5 import ActHdf5Dataset, read_act_episode, write_act_episode


def test_raw_round_trip(tmp_path, make_episode):
    episode = make_episode(0, length=7)
    write_act_episode(tmp_path / "episode_0.hdf5", episode)
    loaded = read_act_episode(tmp_path / "episode_0.hdf5")
    assert loaded.embodiment == "aloha" and loaded.task == episode.task
    assert loaded.substeps == episode.substeps
    np.testing.assert_array_equal(loaded.state, episode.state)
    np.testing.assert_array_equal(loaded.action, episode.action)
    for cam, frames in episode.images.items():
        np.testing.assert_array_equal(loaded.images[cam], frames)


def test_jpeg_compressed(tmp_path, make_episode):
    episode = make_episode(0, length=5, image_hw=(16, 24))
    episode.images = {
        cam: np.broadcast_to(np.linspace(0, 255, 24, dtype=np.uint8)[None, None, :, None],
                             frames.shape).copy()
        for cam, frames in episode.images.items()
    }  # fmt: skip
    path = tmp_path / "episode_0.hdf5"
    write_act_episode(path, episode, compress=True)
    with h5py.File(path) as h5:
        assert bool(h5.attrs["compress"]) and h5["observations/images/cam_high"].ndim == 2
        assert h5["compress_len"].shape == (3, 5)
    loaded = read_act_episode(path)
    for cam, frames in episode.images.items():
        assert loaded.images[cam].shape == frames.shape
        assert np.abs(loaded.images[cam].astype(int) - frames).mean() < 4
    dataset = ActHdf5Dataset(tmp_path)
    assert np.abs(dataset.image(0, 2, "cam_right_wrist").astype(int) - episode.images[
        "cam_right_wrist"][2]).mean() < 4  # fmt: skip


def _act_sim_file(path, length=6, qpos_length=None, cams=("top", "left_wrist", "right_wrist")):
    """An ACT-sim style file: ACT camera names, no embodiment attribute, no language."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        h5.attrs["sim"] = True
        h5["action"] = rng.normal(size=(length, 14))
        h5["observations/qpos"] = rng.normal(size=(qpos_length or length, 14))
        h5["observations/qvel"] = np.zeros((length, 14))
        for cam in cams:
            h5[f"observations/images/{cam}"] = rng.integers(0, 255, (length, 4, 4, 3), np.uint8)


def test_act_camera_names_and_embodiment_inferred(tmp_path):
    _act_sim_file(tmp_path / "episode_0.hdf5")
    episode = read_act_episode(tmp_path / "episode_0.hdf5", task="transfer the cube")
    assert episode.embodiment == "aloha" and episode.task == "transfer the cube"
    assert sorted(episode.images) == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    assert episode.substeps == [""] * 6


def test_directory_order_and_access(tmp_path, make_episode):
    for n in (10, 2, 1):
        write_act_episode(tmp_path / f"episode_{n}.hdf5", make_episode(n, length=4 + n))
    dataset = ActHdf5Dataset(tmp_path)
    assert [p.name for p in dataset.paths] == ["episode_1.hdf5", "episode_2.hdf5",
                                               "episode_10.hdf5"]  # fmt: skip
    assert (dataset.num_episodes, dataset.num_frames, dataset.fps) == (3, 5 + 6 + 14, 50)
    assert dataset.lowdim(2)["substeps"][0] == "step 0 of episode 10"
    np.testing.assert_array_equal(
        dataset.image(1, 3, "cam_high"), make_episode(2, length=6).images["cam_high"][3]
    )


def test_bad_inputs_name_file_and_field(tmp_path, make_episode):
    _act_sim_file(tmp_path / "episode_0.hdf5", qpos_length=5)
    with pytest.raises(ValueError, match=r"episode_0\.hdf5.*observations/qpos has 5 frames"):
        read_act_episode(tmp_path / "episode_0.hdf5")
    _act_sim_file(tmp_path / "episode_1.hdf5", cams=("top", "left_wrist"))
    with pytest.raises(ValueError, match=r"episode_1\.hdf5.*cam_right_wrist.*missing"):
        read_act_episode(tmp_path / "episode_1.hdf5")
    (tmp_path / "episode_2.hdf5").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"episode_2\.hdf5.*not a readable HDF5"):
        read_act_episode(tmp_path / "episode_2.hdf5")
    with pytest.raises(FileNotFoundError, match=r"episode_9\.hdf5"):
        read_act_episode(tmp_path / "episode_9.hdf5")
    with pytest.raises(ValueError, match=r"episode_0\.hdf5"):
        ActHdf5Dataset(tmp_path)
    with h5py.File(tmp_path / "odd.hdf5", "w") as h5:
        h5["action"] = np.zeros((3, 5))
        h5["observations/qpos"] = np.zeros((3, 5))
    with pytest.raises(ValueError, match="cannot tell the embodiment"):
        read_act_episode(tmp_path / "odd.hdf5")
    with pytest.raises(KeyError, match="unknown embodiment"):
        read_act_episode(tmp_path / "odd.hdf5", embodiment="robot-x")
    short = make_episode(0, length=4)
    short.images["cam_high"] = short.images["cam_high"][:3]
    with pytest.raises(ValueError, match="cam_high"):
        write_act_episode(tmp_path / "episode_5.hdf5", short)
    assert not (tmp_path / "episode_5.hdf5").exists()
