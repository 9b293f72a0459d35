"""`dexvla collect`: LeRobot v3 output, seeds per episode, resume, failed seeds."""

import json
from concurrent.futures import ALL_COMPLETED

import pytest

import dexvla.sim as sim
import dexvla.sim.collect as collect_mod
from dexvla.cli import main
from dexvla.data.lerobot_v3 import LeRobotV3Dataset

ARGS = ["collect", "--task", "sawyer-reach", "--image-size", "16", "--no-progress"]


def test_collect_resumes_and_only_adds_missing_episodes(tmp_path, capsys):
    out = tmp_path / "reach"
    assert main([*ARGS, "--episodes", "2", "--out", str(out), "--workers", "1"]) == 0
    assert "2 new, 2 in" in capsys.readouterr().out
    assert main([*ARGS, "--episodes", "3", "--out", str(out), "--workers", "2"]) == 0
    assert "1 new, 3 in" in capsys.readouterr().out

    dataset = LeRobotV3Dataset(out)
    assert dataset.num_episodes == 3
    episodes = [dataset.episode(i) for i in range(3)]
    assert sorted(e.seed for e in episodes) == [0, 1, 2]
    for episode in episodes:
        assert episode.success and episode.task_name == "sawyer-reach"
        assert episode.substeps[0] == "move the gripper to the target"
        assert episode.images["cam_high"].shape[1:] == (16, 16, 3)
        assert episode.camera_fovy == dataset.camera_fovy
    assert dataset.camera_fovy == sim.task_camera_fovy("sawyer-reach")


def test_failed_seeds_are_skipped_and_remembered(tmp_path, monkeypatch):
    real_record = collect_mod.record

    def flaky(task, seed, image_size):
        episode = real_record(task, seed, image_size)
        episode.success = seed != 1
        return episode

    monkeypatch.setattr(collect_mod, "record", flaky)
    out = tmp_path / "flaky"
    report = collect_mod.collect(
        "sawyer-reach", episodes=2, out=out, image_size=8, seed=0, progress=False
    )
    assert (report.new_episodes, report.failed_seeds) == (2, [1])
    dataset = LeRobotV3Dataset(out)
    assert sorted(dataset.episode(i).seed for i in range(dataset.num_episodes)) == [0, 2]
    assert json.loads((out / collect_mod.STATE_FILE).read_text())["failed_seeds"] == [1]


def test_one_task_per_dataset(tmp_path):
    out = tmp_path / "ds"
    collect_mod.collect("sawyer-reach", episodes=1, out=out, image_size=8, progress=False)
    with pytest.raises(ValueError, match="holds task 'sawyer-reach'"):
        collect_mod.collect("sawyer-push", episodes=1, out=out, image_size=8, progress=False)


def test_attempt_cap_stops_a_failing_expert(tmp_path, monkeypatch):
    real_record = collect_mod.record

    def always_fails(task, seed, image_size):
        episode = real_record(task, seed, image_size)
        episode.success = False
        return episode

    monkeypatch.setattr(collect_mod, "record", always_fails)
    report = collect_mod.collect(
        "sawyer-reach", episodes=1, out=tmp_path / "x", image_size=8, max_attempts=2, progress=False
    )
    assert report.new_episodes == 0 and report.failed_seeds == [0, 1]


def test_parallel_workers_write_in_seed_order_whatever_finishes_first(tmp_path, monkeypatch):
    """Report the newest seed as finished first: the dataset must still be in seed order."""
    real_wait = collect_mod.wait

    def newest_first(running, return_when):
        real_wait(list(running), return_when=ALL_COMPLETED)
        newest = max(running, key=running.get)
        return {newest}, set(running) - {newest}

    monkeypatch.setattr(collect_mod, "wait", newest_first)
    out = tmp_path / "ordered"
    assert main([*ARGS, "--episodes", "4", "--out", str(out), "--workers", "2"]) == 0
    dataset = LeRobotV3Dataset(out)
    assert [dataset.episode(i).seed for i in range(4)] == [0, 1, 2, 3]
