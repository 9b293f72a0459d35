"""Dataset statistics and the normaliser."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dexvla.stats import DatasetStats, Normalizer, aggregate_stats, feature_stats


def test_normalizer_ranges_and_round_trip(make_episode):
    episodes = [make_episode(s, length=30) for s in range(3)]
    episodes[0].action[:, 4] = 2.5
    episodes[1].action[:, 4] = 2.5
    episodes[2].action[:, 4] = 2.5
    episodes[0].state[:, 2] = -1.0
    episodes[1].state[:, 2] = -1.0
    episodes[2].state[:, 2] = -1.0
    norm = Normalizer(DatasetStats.from_episodes(episodes))
    actions = np.concatenate([e.action for e in episodes])
    states = np.concatenate([e.state for e in episodes])
    a = norm.normalize("action", actions, "aloha")
    assert a.dtype == np.float32
    np.testing.assert_allclose(a.min(axis=0)[[0, 1, 13]], -1.0, atol=1e-5)
    np.testing.assert_allclose(a.max(axis=0)[[0, 1, 13]], 1.0, atol=1e-5)
    np.testing.assert_allclose(a[:, 4], 0.0)
    s = norm.normalize("observation.state", states, "aloha")
    np.testing.assert_allclose(s.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.delete(s.std(axis=0), 2), 1.0, atol=1e-4)
    np.testing.assert_allclose(s[:, 2], 0.0)
    np.testing.assert_allclose(norm.unnormalize("action", a, "aloha"), actions, atol=1e-5)
    np.testing.assert_allclose(norm.unnormalize("observation.state", s, "aloha"), states,
                               atol=1e-5)  # fmt: skip
    t = torch.from_numpy(actions).double()
    tn = norm.normalize("action", t, "aloha")
    assert isinstance(tn, torch.Tensor) and tn.dtype == torch.float64
    np.testing.assert_allclose(tn.numpy(), a, atol=1e-5)
    np.testing.assert_allclose(norm.unnormalize("action", tn, "aloha").numpy(), actions, atol=1e-5)


def test_errors(make_episode):
    norm = Normalizer(DatasetStats.from_episodes([make_episode(0)]))
    with pytest.raises(KeyError, match="sawyer"):
        norm.normalize("action", np.zeros(4), "sawyer")
    with pytest.raises(KeyError, match="unknown key"):
        norm.normalize("reward", np.zeros(14), "aloha")
    with pytest.raises(ValueError, match="last dim 3"):
        norm.normalize("action", np.zeros(3), "aloha")


def test_save_load_tensors_and_merge(tmp_path, make_episode):
    aloha = [make_episode(s, length=20) for s in range(4)]
    sawyer = [make_episode(9, length=15, embodiment="sawyer")]
    full = DatasetStats.from_episodes([*aloha, *sawyer])
    assert full.embodiments == ["aloha", "sawyer"]
    merged = DatasetStats.from_episodes(aloha[:2]).merge(
        DatasetStats.from_episodes([*aloha[2:], *sawyer])
    )
    for key in ("action", "observation.state"):
        for stat in ("min", "max", "mean", "std"):
            np.testing.assert_allclose(merged.stats["aloha"][key][stat],
                                       full.stats["aloha"][key][stat], atol=1e-9)  # fmt: skip
        assert int(merged.stats["aloha"][key]["count"][0]) == 80
    full.save(tmp_path / "stats.json")
    loaded = DatasetStats.load(tmp_path / "stats.json")
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    for stats in (loaded, DatasetStats.from_tensors(full.to_tensors())):
        np.testing.assert_allclose(
            Normalizer(stats).normalize("action", x, "sawyer"),
            Normalizer(full).normalize("action", x, "sawyer"),
            atol=1e-5,
        )
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json"):
        DatasetStats.load(tmp_path / "bad.json")


def test_aggregate_matches_direct():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 3)), rng.normal(2.0, 3.0, size=(20, 3))
    combined = aggregate_stats([feature_stats(a), feature_stats(b)])
    direct = feature_stats(np.concatenate([a, b]))
    for stat in ("min", "max", "mean", "std"):
        np.testing.assert_allclose(combined[stat], direct[stat], atol=1e-9)


def test_camera_fovy_travels_with_the_stats_and_conflicts_are_refused(tmp_path, make_episode):
    wide = dataclasses.replace(make_episode(0), camera_fovy={"cam_high": 78.0})
    narrow = dataclasses.replace(make_episode(1), camera_fovy={"cam_high": 50.0})
    sawyer = make_episode(2, embodiment="sawyer")
    stats = DatasetStats.from_episodes([narrow, sawyer])
    assert stats.camera_fovy == {"aloha": {"cam_high": 50.0}}
    stats.save(tmp_path / "stats.json")
    assert DatasetStats.load(tmp_path / "stats.json").camera_fovy == stats.camera_fovy
    with pytest.raises(ValueError, match=r"cam_high.*78 vs 50 degrees"):
        DatasetStats.from_episodes([wide]).merge(stats)
    with pytest.raises(ValueError, match="disagree on its field of view"):
        DatasetStats.from_episodes([wide, narrow])
    unrecorded = DatasetStats.from_episodes([make_episode(3)])
    assert unrecorded.merge(stats).camera_fovy == stats.camera_fovy
    fallback = DatasetStats.from_episodes([sawyer]).with_fallback(stats)
    assert fallback.embodiments == ["aloha", "sawyer"]
    assert fallback.camera_fovy == {"aloha": {"cam_high": 50.0}}


def test_a_stats_file_missing_a_statistic_is_an_error_naming_the_file_and_key(tmp_path):
    import json
    import re

    rng = np.random.default_rng(0)
    path = tmp_path / "stats.json"
    DatasetStats.from_arrays("aloha", rng.normal(size=(9, 14)), rng.normal(size=(9, 14))).save(path)
    data = json.loads(path.read_text())
    del data["embodiments"]["aloha"]["observation.state"]["std"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as error:
        DatasetStats.load(path)
    assert str(error.value).startswith(f"{path}: ") and "observation.state.std" in str(error.value)
    path.write_text('{"version": 1, "embodiments": {"robot-x": {}}}')
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + ".*robot-x"):
        DatasetStats.load(path)
    path.write_text("{")
    with pytest.raises(ValueError, match=r"stats\.json is not valid JSON"):
        DatasetStats.load(path)
