"""Training windows, collation and the weighted mixture."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dexvla.data.act_hdf5 import ActHdf5Dataset, write_act_episode
from dexvla.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer
from dexvla.data.sampler import EmbodimentBatchSampler
from dexvla.data.windows import ChunkWindows, MixtureDataset, collate_windows
from dexvla.imaging import resize_images
from dexvla.stats import DatasetStats, Normalizer


@pytest.fixture
def lerobot_dir(tmp_path, make_episode):
    with LeRobotV3Writer(tmp_path / "lr", embodiment="aloha", fps=50) as writer:
        for s in range(2):
            writer.add_episode(make_episode(s, length=6))
    return tmp_path / "lr"


def test_windows_pad_at_episode_end(lerobot_dir, make_episode):
    source = LeRobotV3Dataset(lerobot_dir)
    norm = Normalizer(DatasetStats.from_source(source))
    windows = ChunkWindows(source, chunk_size=4, normalizer=norm)
    assert len(windows) == 12 and windows.locate(7) == (1, 1)
    sample = windows[4]  # episode 0, frame 4: frames 4, 5 real, then 2 padded
    episode = make_episode(0, length=6)
    assert sample["action_is_pad"].tolist() == [False, False, True, True]
    expected = norm.normalize("action", episode.action[4:6], "aloha")
    np.testing.assert_allclose(sample["action"][:2].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(sample["action"][2:].numpy(), np.stack([expected[-1]] * 2),
                               atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(sample["observation.state"].numpy(),
                               norm.normalize("observation.state", episode.state[4], "aloha"),
                               atol=1e-6)  # fmt: skip
    image = sample["observation.images.cam_high"]
    assert image.shape == (3, 8, 10) and image.dtype == torch.uint8
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), episode.images["cam_high"][4])
    assert (sample["task"], sample["substep"], sample["embodiment"]) == (
        "pick up the cube", "step 1 of episode 0", "aloha")  # fmt: skip
    zero = ChunkWindows(source, chunk_size=4, normalizer=norm, pad="zero")[5]
    assert zero["action_is_pad"].tolist() == [False, True, True, True]
    assert torch.all(zero["action"][1:] == 0)
    assert not windows[0]["action_is_pad"].any()


def test_windows_resize_to_the_policy_size_as_the_policy_does(lerobot_dir, make_episode):
    """uint8 frames at `image_size`, equal to the policy's float resize to the nearest 1/255."""
    source = LeRobotV3Dataset(lerobot_dir)
    norm = Normalizer(DatasetStats.from_source(source))
    windows = ChunkWindows(source, chunk_size=2, normalizer=norm, image_size=(28, 14))
    image = windows[3]["observation.images.cam_left_wrist"]
    assert image.shape == (3, 28, 14) and image.dtype == torch.uint8
    frame = torch.from_numpy(make_episode(0, length=6).images["cam_left_wrist"][3])
    as_float = frame.permute(2, 0, 1)[None].float() / 255  # the policy's path: float, then resize
    expected = resize_images(as_float, (28, 14))[0]
    assert (image.float() / 255 - expected).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="image_size"):
        ChunkWindows(source, chunk_size=2, normalizer=norm, image_size=(0, 14))


def test_collate_and_dataloader_over_hdf5(tmp_path, make_episode):
    for s in range(2):
        write_act_episode(tmp_path / f"episode_{s}.hdf5", make_episode(s, length=5))
    source = ActHdf5Dataset(tmp_path)
    windows = ChunkWindows(source, chunk_size=3, normalizer=Normalizer(
        DatasetStats.from_source(source)))  # fmt: skip
    loader = DataLoader(windows, batch_size=4, collate_fn=collate_windows, num_workers=0)
    batch = next(iter(loader))
    assert batch["observation.images.cam_left_wrist"].shape == (4, 3, 8, 10)
    assert batch["observation.images.cam_left_wrist"].dtype == torch.uint8
    assert batch["observation.state"].shape == (4, 14)
    assert batch["action"].shape == (4, 3, 14)
    assert batch["action_is_pad"].dtype == torch.bool and batch["action_is_pad"].shape == (4, 3)
    assert batch["task"] == ["pick up the cube"] * 4 and len(batch["substep"]) == 4
    assert batch["embodiment"] == ["aloha"] * 4
    mixed = [windows[0], dict(windows[1], embodiment="sawyer")]
    with pytest.raises(ValueError, match="one embodiment per batch"):
        collate_windows(mixed)


def test_mixture_follows_weights(tmp_path, make_episode):
    datasets = []
    for name, embodiment in (("a", "aloha"), ("b", "sawyer"), ("c", "aloha")):
        root = tmp_path / name
        with LeRobotV3Writer(root, embodiment=embodiment, fps=10) as writer:
            writer.add_episode(make_episode(0, length=5, embodiment=embodiment))
        source = LeRobotV3Dataset(root)
        datasets.append(ChunkWindows(source, chunk_size=2, normalizer=Normalizer(
            DatasetStats.from_source(source))))  # fmt: skip
    mixture = MixtureDataset(datasets, [0.6, 0.3, 0.1])
    sampler = EmbodimentBatchSampler(mixture, batch_size=3, num_batches=3000, seed=0)
    counts = Counter()
    for batch in sampler:
        owners = {int(np.searchsorted(mixture.offsets, i, side="right")) - 1 for i in batch}
        assert len(owners) == 1
        counts[owners.pop()] += 1
    for k, weight in enumerate([0.6, 0.3, 0.1]):
        assert abs(counts[k] / 3000 - weight) < 0.03
    assert list(sampler) == list(EmbodimentBatchSampler(mixture, batch_size=3, num_batches=3000,
                                                        seed=0))  # fmt: skip
    loader = DataLoader(mixture, batch_sampler=EmbodimentBatchSampler(
        mixture, batch_size=2, num_batches=5, seed=1), collate_fn=collate_windows)  # fmt: skip
    for batch in loader:
        assert len(set(batch["embodiment"])) == 1
        assert batch["action"].shape[-1] == (4 if batch["embodiment"][0] == "sawyer" else 14)
    with pytest.raises(ValueError, match="weight"):
        MixtureDataset(datasets, [1.0])


def test_windows_carry_the_raw_env_state_of_the_frame_on_request(tmp_path, make_episode):
    episodes = []
    with LeRobotV3Writer(tmp_path / "env", embodiment="aloha", fps=50) as writer:
        for s in range(2):
            episode = make_episode(s, length=6)
            episode.env_state = np.arange(18, dtype=np.float32).reshape(6, 3) + 100 * s
            writer.add_episode(episode)
            episodes.append(episode)
    source = LeRobotV3Dataset(tmp_path / "env")
    norm = Normalizer(DatasetStats.from_source(source))
    windows = ChunkWindows(source, chunk_size=3, normalizer=norm, env_state=True)
    sample = windows[8]  # episode 1, frame 2
    value = sample["observation.environment_state"]
    assert value.dtype == torch.float32 and value.shape == (3,)
    np.testing.assert_array_equal(value.numpy(), episodes[1].env_state[2])
    batch = collate_windows([windows[0], windows[8]])
    assert batch["observation.environment_state"].shape == (2, 3)
    plain = ChunkWindows(source, chunk_size=3, normalizer=norm)[8]
    assert "observation.environment_state" not in plain
    assert set(plain) == set(sample) - {"observation.environment_state"}


def test_windows_refuse_env_state_for_a_dataset_without_it(lerobot_dir, tmp_path, make_episode):
    source = LeRobotV3Dataset(lerobot_dir)
    norm = Normalizer(DatasetStats.from_source(source))
    with pytest.raises(ValueError, match=r"lr: env_state=True .*'observation\.environment_state'"):
        ChunkWindows(source, chunk_size=3, normalizer=norm, env_state=True)
    (tmp_path / "act").mkdir()
    write_act_episode(tmp_path / "act" / "episode_0.hdf5", make_episode(0, length=5))
    act = ActHdf5Dataset(tmp_path / "act")
    assert act.env_state_dim is None and act.lowdim(0)["env_state"] is None
    with pytest.raises(ValueError, match=r"act: env_state=True"):
        ChunkWindows(act, chunk_size=3, normalizer=norm, env_state=True)
