import json
import math
import shutil

import numpy as np
import pytest

from dexvla.cli import main
from dexvla.eval import DEFAULT_EVAL_SEED
from dexvla.eval.evaluate import (
    EPISODES_FILE,
    INFO_FILE,
    EvalConfig,
    check_cameras,
    evaluate,
    load_records,
)
from dexvla.eval.report import annotate_frame, summarize, wilson_interval
from dexvla.stats import DatasetStats

TASK = "aloha-transfer-cube"


def tiny_eval(out, checkpoint, **changes) -> EvalConfig:
    settings = dict(
        task=TASK,
        episodes=2,
        out=out,
        checkpoint=checkpoint,
        max_steps=40,
        image_size=32,
        videos=1,
        progress=False,
        threads=1,
    )
    settings.update(changes)
    return EvalConfig(**settings)


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and high == pytest.approx(0.4345, abs=1e-4)
    low, high = wilson_interval(5, 5)
    assert low == pytest.approx(0.5655, abs=1e-4) and high == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # Symmetric around 1/2 and narrower with more trials.
    a, b = wilson_interval(50, 100)
    assert a + b == pytest.approx(1.0) and b - a < 0.2 < math.fsum(wilson_interval(5, 10)[::-1])
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_random_policy_writes_every_artefact_and_resumes(tmp_path, checkpoint, monkeypatch):
    out = tmp_path / "run"
    info = evaluate(tiny_eval(out, checkpoint))
    summary = info["summary"]
    assert summary["episodes"] == 2 and 0.0 <= summary["success_rate"] <= 1.0
    assert summary["success_ci95"] == list(
        wilson_interval(summary["successes"], summary["episodes"])
    )
    lines = (out / EPISODES_FILE).read_text().splitlines()
    records = sorted((json.loads(line) for line in lines), key=lambda r: r["episode"])
    assert [r["seed"] for r in records] == [DEFAULT_EVAL_SEED, DEFAULT_EVAL_SEED + 1]
    for record in records:
        assert record["steps"] == 40  # a random policy does not solve the task in 40 steps
        assert record["chunks"] == 3  # ceil(40 / 16) chunks, each regenerating the sub-step
        assert record["latency"]["reasoning_chunk_ms"]["count"] == 3
        assert record["timeline"][0]["start"] == 0 and record["timeline"][-1]["end"] == 40
        assert record["stage_names"][-1] == "transferred"
    on_disk = json.loads((out / INFO_FILE).read_text())
    assert on_disk["status"] == "complete" and on_disk["summary"] == summary
    for path in records[0]["artefacts"].values():
        assert (out / path).stat().st_size > 0
    assert set(records[0]["artefacts"]) == {"video", "timeline", "actions"}
    assert records[1]["artefacts"] == {}
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(out / records[0]["artefacts"]["video"]))
    assert reader.count_frames() == 40
    html = (out / "report.html").read_text()
    for path in records[0]["artefacts"].values():
        assert path in html

    # Resuming with more episodes runs only the new one.
    calls = []
    import dexvla.eval.evaluate as module

    original = module._run_one
    monkeypatch.setattr(module, "_run_one", lambda i: calls.append(i) or original(i))
    info = evaluate(tiny_eval(out, checkpoint, episodes=3))
    assert calls == [2] and info["summary"]["episodes"] == 3
    assert len((out / EPISODES_FILE).read_text().splitlines()) == 3

    # A different configuration in the same directory is refused.
    with pytest.raises(ValueError, match="different configuration"):
        evaluate(tiny_eval(out, checkpoint, execute_steps=8))


def test_episodes_are_reproducible_and_cached_reasoning_is_counted(tmp_path, checkpoint):
    config = dict(episodes=1, videos=0, max_steps=20, execute_steps=5, reasoning_every=2)
    evaluate(tiny_eval(tmp_path / "a", checkpoint, **config))
    evaluate(tiny_eval(tmp_path / "b", checkpoint, **config))
    [first], [second] = load_records(tmp_path / "a"), load_records(tmp_path / "b")
    assert first["latency"]["reasoning_chunk_ms"]["count"] == 2  # chunks 0 and 2 of 4
    assert first["latency"]["cached_chunk_ms"]["count"] == 2
    assert first["total_reward"] == second["total_reward"]
    assert first["timeline"] == second["timeline"]


def test_torn_jsonl_line_is_dropped(tmp_path):
    (tmp_path / EPISODES_FILE).write_text('{"episode": 0, "success": true}\n{"episode": 1, "su')
    assert load_records(tmp_path) == [{"episode": 0, "success": True}]
    assert (tmp_path / EPISODES_FILE).read_text() == '{"episode": 0, "success": true}\n'


def test_summary_counts_reward_stages():
    def record(stage, success):
        latency = {"chunk_ms": None, "reasoning_chunk_ms": None, "cached_chunk_ms": None}
        return {
            "success": success,
            "max_reward": stage,
            "max_reward_possible": 4,
            "stage_names": ["none", "touched", "lifted", "attempted", "transferred"],
            "steps": 10,
            "latency": {**latency, "step_ms": None, "policy_s": 0.0},
        }

    summary = summarize([record(4, True), record(2, False), record(0, False), record(1, False)])
    assert summary["success_rate"] == 0.25
    reached = {k: v["fraction"] for k, v in summary["stage_reached"].items()}
    assert reached == {"1": 0.75, "2": 0.5, "3": 0.25, "4": 0.25}
    assert summary["stage_reached"]["2"]["name"] == "lifted"


def test_annotated_frames_are_macroblock_aligned():
    frame = annotate_frame([np.zeros((30, 40, 3), np.uint8)] * 3, "grasp the cube " * 10, 7)
    assert frame.shape[0] % 16 == 0 and frame.shape[1] % 16 == 0 and frame.shape[1] >= 120
    assert frame[30:, :120].max() > 0  # the text band is written


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "--task",
                "no-such-task",
                "--episodes",
                "1",
                "--policy",
                "scripted",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "unknown task 'no-such-task'" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert (
        main(
            [
                "eval",
                "--task",
                TASK,
                "--episodes",
                "1",
                "--checkpoint",
                str(missing),
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert f"checkpoint {missing} not found" in capsys.readouterr().err
    assert main(["eval", "--task", TASK, "--episodes", "1", "--out", str(tmp_path / "z")]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        EvalConfig(task=TASK, episodes=0, out=tmp_path, policy="scripted").validate()
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_scripted_expert_solves_transfer_cube(tmp_path):
    out = tmp_path / "scripted"
    code = main(
        [
            "eval",
            "--task",
            TASK,
            "--policy",
            "scripted",
            "--episodes",
            "2",
            "--out",
            str(out),
            "--image-size",
            "32",
            "--videos",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    info = json.loads((out / INFO_FILE).read_text())
    assert info["summary"]["successes"] == 2
    assert all(r["max_stage_name"] == "transferred" for r in info["episodes"])
    assert all(r["success_step"] < 400 for r in info["episodes"])


@pytest.mark.slow
def test_worker_processes_give_the_same_episodes(tmp_path):
    settings = dict(policy="scripted", max_steps=30, videos=0, threads=None)
    evaluate(tiny_eval(tmp_path / "one", None, **settings))
    evaluate(tiny_eval(tmp_path / "two", None, workers=2, **settings))
    one = sorted(load_records(tmp_path / "one"), key=lambda r: r["episode"])
    two = sorted(load_records(tmp_path / "two"), key=lambda r: r["episode"])
    assert [r["seed"] for r in two] == [DEFAULT_EVAL_SEED, DEFAULT_EVAL_SEED + 1]
    for a, b in zip(one, two, strict=True):
        assert (a["steps"], a["total_reward"], a["timeline"]) == (
            b["steps"],
            b["total_reward"],
            b["timeline"],
        )


def test_a_checkpoint_trained_at_another_field_of_view_is_refused(tmp_path, checkpoint):
    trained = tmp_path / "wide"
    shutil.copytree(checkpoint, trained)
    stats = DatasetStats.load(trained / "stats.json")
    stats.camera_fovy = {"aloha": {"cam_high": 78.0}}
    stats.save(trained / "stats.json")
    config = EvalConfig(task=TASK, episodes=1, out=tmp_path / "out", checkpoint=trained)
    with pytest.raises(ValueError, match=r"'cam_high' at a 78 degree .* renders it at 50 degrees"):
        evaluate(config)
    check_cameras(checkpoint, TASK)  # no recorded field of view: nothing to compare
    stats.camera_fovy = {"aloha": {"cam_high": 50.0}}
    stats.save(trained / "stats.json")
    check_cameras(trained, TASK)
