"""The pipeline's steps call the package's functions (not the command line), resume, and fail
naming the step; stage recipes are the stage presets with the run's overrides."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from dexvla.experiments.pipeline import (
    Pipeline,
    StepFailed,
    Train,
    stage_recipe,
    with_overrides,
)
from dexvla.experiments.runner import SuiteRun
from dexvla.experiments.sizes import BENCH_SIZES
from dexvla.experiments.suites import get_suite
from dexvla.train.stages import get_stage_preset


def test_stage_recipe_is_the_preset_with_the_run_settings_and_overrides():
    config = stage_recipe(
        "tiny-l",
        2,
        steps=7,
        batch_size=4,
        seed=3,
        overrides={"use_reasoning": False, "train": {"lr": 1e-3}},
    )
    preset = get_stage_preset("tiny-stage2")
    assert config.policy == "tiny-l" and config.freeze_vision == preset.freeze_vision
    assert (config.train.steps, config.train.batch_size, config.train.seed) == (7, 4, 3)
    assert config.train.lr == 1e-3 and config.train.ema == preset.train.ema
    assert not config.use_reasoning and config.noise_samples == preset.noise_samples


def test_unknown_overrides_are_refused_by_name():
    preset = get_stage_preset("tiny-stage1")
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['noise', 'train.rate'\]"):
        with_overrides(preset, {"noise": 2, "train": {"rate": 1.0}})


def test_steps_call_collect_run_stage_and_evaluate(tmp_path, monkeypatch, capsys):
    calls: dict[str, list] = {"collect": [], "run_stage": [], "evaluate": []}

    def collect(task, *, episodes, out, workers, image_size):
        calls["collect"].append((task, episodes, out, workers, image_size))
        return SimpleNamespace(new_episodes=episodes, total_episodes=episodes, failed_seeds=[])

    def run_stage(config, data, out, *, init=None, resume=False):
        calls["run_stage"].append((config, data, out, init, resume))
        (Path(out) / "final").mkdir(parents=True)
        (Path(out) / "final" / "config.json").write_text("{}")
        return Path(out) / "final"

    def evaluate(config):
        calls["evaluate"].append(config)
        summary = {"episodes": config.episodes, "successes": 1, "success_rate": 1.0}
        Path(config.out).mkdir(parents=True, exist_ok=True)
        (Path(config.out) / "eval_info.json").write_text(json.dumps({"summary": summary}))
        return {"summary": summary}

    monkeypatch.setattr("dexvla.sim.collect.collect", collect)
    monkeypatch.setattr("dexvla.train.stages.run_stage", run_stage)
    monkeypatch.setattr("dexvla.eval.evaluate.evaluate", evaluate)
    # ablate-stage1 on its first task: collection, both arms' stages and evaluations
    suite = dataclasses.replace(get_suite("ablate-stage1"), tasks=("aloha-transfer-cube",))
    run = SuiteRun(suite, BENCH_SIZES["ci"], 1, tmp_path)
    plan = run.plan()
    run.run(plan)
    trains = [step for step in plan if isinstance(step, Train)]
    assert [(c, d, o, i) for c, d, o, i, _ in calls["run_stage"]] == [
        (t.config, t.data, t.out, t.init) for t in trains
    ]
    assert all(resume for *_, resume in calls["run_stage"])
    assert [c[0] for c in calls["collect"]] == ["aloha-transfer-cube", "sawyer-reach"]
    dataset = tmp_path / "data" / "aloha-transfer-cube-2ep-56px"
    assert calls["collect"][0][1:] == (2, dataset, 1, (56, 56))
    assert [c.policy for c in calls["evaluate"]] == ["scripted", "checkpoint", "checkpoint"]
    assert set(run.pipeline.timings) == {step.label for step in plan}
    capsys.readouterr()
    SuiteRun(suite, BENCH_SIZES["ci"], 1, tmp_path).run()
    assert len(calls["run_stage"]) == len(trains)  # finished stages are skipped
    assert len(calls["evaluate"]) == 6  # evaluation resumes inside evaluate()
    assert capsys.readouterr().out.count("exists, skipped") == len(trains)


def test_a_short_collection_fails_naming_the_step(tmp_path, monkeypatch):
    def collect(task, **kwargs):
        return SimpleNamespace(new_episodes=1, total_episodes=1, failed_seeds=[4, 5])

    monkeypatch.setattr("dexvla.sim.collect.collect", collect)
    plan = SuiteRun(get_suite("aloha-sim"), BENCH_SIZES["ci"], 1, tmp_path).plan()
    step = next(step for step in plan if step.label.startswith("collect"))
    with pytest.raises(StepFailed, match="'collect aloha-transfer-cube' failed: only 1 of 2"):
        Pipeline("test").run(step)
