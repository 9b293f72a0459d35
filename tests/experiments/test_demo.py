"""`dexvla demo`: the step sequence, resumption, and the whole pipeline at its smallest size."""

import json
from pathlib import Path

import pytest

from dexvla.cli import main
from dexvla.experiments.demo import SIZES, run_demo


def _fake_eval_info(path: Path, successes: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    summary = {
        "episodes": 2,
        "successes": successes,
        "success_ci95": [0.0, 1.0],
        "stage_reached": {"1": {"name": "touched", "fraction": 0.5}},
        "mean_max_reward": 0.5,
    }
    (path / "eval_info.json").write_text(json.dumps({"summary": summary}))


def test_demo_runs_every_step_in_order_and_skips_finished_stages(tmp_path, capsys):
    calls = []

    def command(argv):
        calls.append(argv)
        if argv[0] == "eval":
            out = Path(argv[argv.index("--out") + 1])
            _fake_eval_info(out, successes=2 if "scripted" in argv else 0)
        return 0

    (tmp_path / "stage1" / "final").mkdir(parents=True)
    (tmp_path / "stage1" / "final" / "config.json").write_text("{}")
    assert run_demo(SIZES["ci"], tmp_path, command) == 0
    kinds = [(argv[0], argv[2] if argv[0] == "train" else None) for argv in calls]
    assert kinds == [
        ("collect", None),
        ("collect", None),
        ("train", "2"),
        ("train", "3"),
        ("eval", None),
        ("eval", None),
    ]
    stage2 = calls[2]
    assert stage2[stage2.index("--init") + 1] == str(tmp_path / "stage1" / "final")
    stage3 = calls[3]
    assert stage3[stage3.index("--init") + 1] == str(tmp_path / "stage2" / "final")
    assert "--resume" in stage2
    report = (tmp_path / "report.md").read_text()
    assert "scripted expert (ceiling) | 2/2" in report
    assert "touched 50%" in report
    assert "skipped" in capsys.readouterr().out


def test_demo_stops_at_a_failing_step_and_says_how_to_resume(tmp_path, capsys):
    calls = []

    def command(argv):
        calls.append(argv)
        return 2 if argv[0] == "train" else 0

    assert run_demo(SIZES["ci"], tmp_path, command) == 1
    assert calls[-1][0] == "train"
    assert "re-run the same command to resume" in capsys.readouterr().out
    assert not (tmp_path / "report.md").exists()


def test_demo_rejects_bad_sizes(capsys):
    assert main(["demo", "--size", "ci", "--episodes", "0", "--out", "/nonexistent"]) == 2
    assert "at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end_at_ci_size(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "ci", "--out", str(out)]) == 0
    for stage in (1, 2, 3):
        assert (out / f"stage{stage}" / "final" / "model.safetensors").is_file()
        assert (out / f"stage{stage}" / "metrics.jsonl").is_file()
    for name in ("policy", "scripted"):
        info = json.loads((out / "eval" / name / "eval_info.json").read_text())
        assert info["summary"]["episodes"] == SIZES["ci"].eval_episodes
        assert (out / "eval" / name / "report.html").is_file()
    assert list((out / "eval" / "policy" / "videos").glob("*.mp4"))
    report = (out / "report.md").read_text()
    assert "DexVLA (tiny, stages 1-3)" in report and "loss_curve.png" in report
    # a second run resumes: every step is already complete
    assert main(["demo", "--size", "ci", "--out", str(out)]) == 0
