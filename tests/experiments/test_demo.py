"""`dexvla demo`: its plan (the recipe of --preset), resumption, the report, and the whole
pipeline at its smallest size."""

import dataclasses
import json

import pytest

from dexvla.cli import main
from dexvla.experiments.demo import demo_run, run_demo
from dexvla.experiments.pipeline import Collect, Evaluate, Train
from dexvla.experiments.sizes import DEMO_SIZES
from dexvla.train.stages import get_stage_preset


def _trains(plan):
    return [step for step in plan if isinstance(step, Train)]


def test_demo_with_the_2b_preset_plans_the_2b_stage_recipes(tmp_path):
    size = dataclasses.replace(DEMO_SIZES["gpu"], preset="dexvla-2b")
    trains = _trains(demo_run(size, tmp_path).plan())
    assert [train.config.name for train in trains] == ["2b-stage1", "2b-stage2", "2b-stage3"]
    for stage, train in enumerate(trains, 1):
        preset = get_stage_preset(f"2b-stage{stage}")
        assert train.config.policy == "dexvla-2b"
        assert train.config.train.precision == "bf16"
        assert train.config.train.lr == preset.train.lr
        assert train.config.train.schedule == preset.train.schedule
        assert train.config.freeze_vision
        assert train.config.train.steps == size.steps[stage - 1]
        assert train.config.train.batch_size == size.batch_size
    assert [train.config.train.lr for train in trains] == [1e-4, 2e-5, 2e-5]


def test_demo_with_the_tiny_preset_plans_the_tiny_recipes(tmp_path):
    plan = demo_run(DEMO_SIZES["cpu"], tmp_path).plan()
    trains = _trains(plan)
    assert [train.config.name for train in trains] == [f"tiny-stage{n}" for n in (1, 2, 3)]
    assert all(not t.config.freeze_vision and t.config.train.precision == "no" for t in trains)
    assert trains[1].init == trains[0].final and trains[2].init == trains[1].final
    # The recipe chosen on validation episodes: predicted positions, clean-chunk targets.
    assert all(t.config.env_state == "predicted" for t in trains)
    assert all(t.config.prediction_type == "sample" for t in trains)
    assert all(t.config.noise_samples == 2 for t in trains)
    collects = [step for step in plan if isinstance(step, Collect)]
    assert [(c.task, c.episodes, c.image_size) for c in collects] == [
        ("aloha-transfer-cube", 50, 84),
        ("sawyer-reach", 10, 84),
        ("sawyer-pick-place", 10, 84),
    ]
    evals = [step for step in plan if isinstance(step, Evaluate)]
    assert [e.config.policy for e in evals] == ["scripted", "checkpoint"]
    assert evals[1].config.checkpoint == trains[2].final
    assert all(e.config.episodes == 10 and e.config.image_size == 84 for e in evals)


def test_demo_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--preset", "dexvla-2b", "--size", "ci", "--dry-run", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for stage in (1, 2, 3):
        assert f"recipe 2b-stage{stage}" in printed
    assert "precision bf16" in printed and "vision frozen" in printed
    assert not out.exists()


def test_demo_runs_every_step_in_order_and_skips_finished_stages(tmp_path, capsys, fake):
    stage1 = _trains(demo_run(DEMO_SIZES["ci"], tmp_path).plan())[0]
    stage1.final.mkdir(parents=True)
    (stage1.final / "config.json").write_text("{}")
    assert run_demo(DEMO_SIZES["ci"], tmp_path, fake) == 0
    kinds = [(type(step).__name__, getattr(step, "config", None)) for step in fake.calls]
    assert [kind for kind, _ in kinds] == [
        "Evaluate",
        "Collect",
        "Collect",
        "Train",
        "Train",
        "Evaluate",
    ]
    stage2, stage3 = fake.trains()
    assert stage2.config.stage == 2 and stage2.init == stage1.final
    assert stage3.config.stage == 3 and stage3.init == stage2.final
    report = (tmp_path / "report.md").read_text()
    assert "scripted expert (ceiling) | 1/1" in report
    assert "DexVLA (tiny, stages 1-3) | 1/1" in report
    assert "touched 50%" in report
    assert (tmp_path / "results.json").is_file() and (tmp_path / "results.md").is_file()
    printed = capsys.readouterr().out
    assert "skipped" in printed and "closed loop on aloha-transfer-cube" in printed


def test_demo_report_links_only_files_that_exist(tmp_path, fake):
    def execute(step):
        fake(step)
        if isinstance(step, Train) and step.config.stage == 2:
            (step.out / "loss_curve.png").write_bytes(b"\x89PNG")
        if isinstance(step, Evaluate) and step.config.policy == "scripted":
            (step.out / "report.html").write_text("<html></html>")

    assert run_demo(DEMO_SIZES["ci"], tmp_path, execute) == 0
    stage2 = fake.trains()[1]
    report = (tmp_path / "report.md").read_text()
    assert str((stage2.out / "loss_curve.png").relative_to(tmp_path)) in report
    assert "stage 1 loss" not in report and "stage 3 loss" not in report
    assert report.count("report.html") == 1
    for link in report.split("](")[1:]:
        assert (tmp_path / link.split(")")[0]).is_file(), link


def test_demo_stops_at_a_failing_step_and_says_how_to_resume(tmp_path, capsys, fake):
    def execute(step):
        fake(step)
        if isinstance(step, Train):
            raise FileNotFoundError("no dataset")

    assert run_demo(DEMO_SIZES["ci"], tmp_path, execute) == 1
    assert isinstance(fake.calls[-1], Train)
    assert "re-run the same command to resume" in capsys.readouterr().out
    assert not (tmp_path / "report.md").exists()


def test_demo_rejects_bad_sizes(capsys):
    assert main(["demo", "--size", "ci", "--episodes", "0", "--out", "/nonexistent"]) == 2
    assert "at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end_at_ci_size(tmp_path):
    out = tmp_path / "demo"
    plan = demo_run(DEMO_SIZES["ci"], out).plan()
    assert main(["demo", "--size", "ci", "--out", str(out)]) == 0
    for train in _trains(plan):
        assert (train.final / "model.safetensors").is_file()
        assert (train.out / "metrics.jsonl").is_file()
    evals = {step.config.policy: step.out for step in plan if isinstance(step, Evaluate)}
    for path in evals.values():
        info = json.loads((path / "eval_info.json").read_text())
        assert info["summary"]["episodes"] == DEMO_SIZES["ci"].eval_episodes
        assert (path / "report.html").is_file()
    assert list((evals["checkpoint"] / "videos").glob("*.mp4"))
    report = (out / "report.md").read_text()
    assert "DexVLA (tiny, stages 1-3)" in report and "loss_curve.png" in report
    for link in report.split("](")[1:]:
        assert (out / link.split(")")[0]).is_file(), link
    # a second run resumes: every step is already complete
    assert main(["demo", "--size", "ci", "--out", str(out)]) == 0
