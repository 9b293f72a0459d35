"""`dexvla benchmark`: each suite's step plan, shared runs, resumption, tables and intervals."""

import json
import subprocess
from pathlib import Path

import pytest

from dexvla.cli import main
from dexvla.experiments.pipeline import StepFailed
from dexvla.experiments.results import SCRIPTED, aggregate, compare_arms
from dexvla.experiments.runner import SuiteRun
from dexvla.experiments.sizes import BENCH_SIZES, DEMO_SIZES, RUN_SIZES
from dexvla.experiments.suites import SUITES, Arm, Suite, get_suite


@pytest.mark.parametrize("name", list(SUITES))
def test_every_suite_plans_its_steps_and_writes_results(tmp_path, name, fake):
    suite = get_suite(name)
    path = SuiteRun(suite, BENCH_SIZES["ci"], 2, tmp_path, fake).run()
    # one scripted ceiling per task, then one evaluation per arm, task and seed
    assert len(fake.evals()) == len(suite.tasks) * (1 + 2 * len(suite.arms))
    for train in fake.trains():
        if train.config.stage != 1:
            assert len(train.data) == 1  # stages 2-3: the target task only
    data = json.loads((tmp_path / name / "results.json").read_text())
    assert {row["arm"] for row in data["rows"]} == {SCRIPTED, *(arm.name for arm in suite.arms)}
    assert (tmp_path / name / "results.png").stat().st_size > 1000
    assert len(data["comparisons"]) == len(suite.tasks) * (len(suite.arms) - 1)
    tables = len(data["rows"]) + 1 + (len(data["comparisons"]) + 1 if data["comparisons"] else 0)
    assert path.read_text().count("\n| ") == tables  # rows and comparisons, with headers


def _git(directory: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(directory), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_results_record_the_git_revision_of_the_output_directory(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "notes.txt").write_text("x\n")
    _git(repo, "add", "notes.txt")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    suite = get_suite("ablate-stage1")
    SuiteRun(suite, BENCH_SIZES["ci"], 1, repo / "runs", fake).run()
    data = json.loads((repo / "runs" / suite.name / "results.json").read_text())
    assert data["git"] == head  # the untracked runs/ do not make it dirty
    assert f"git revision `{head}`" in (repo / "runs" / suite.name / "results.md").read_text()
    (repo / "notes.txt").write_text("changed\n")
    SuiteRun(suite, BENCH_SIZES["ci"], 1, repo / "runs", fake).run()
    assert json.loads((repo / "runs" / suite.name / "results.json").read_text())["git"] == (
        head + "+dirty"
    )


def test_results_outside_a_git_checkout_record_no_revision_and_say_why(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    suite = get_suite("ablate-stage1")
    SuiteRun(suite, BENCH_SIZES["ci"], 1, tmp_path / "out", fake).run()
    data = json.loads((tmp_path / "out" / suite.name / "results.json").read_text())
    assert data["git"] is None
    markdown = (tmp_path / "out" / suite.name / "results.md").read_text()
    assert "git revision unknown" in markdown and "not inside a git checkout" in markdown


def test_ablate_stage1_arms_differ_only_in_stage1(tmp_path, fake):
    SuiteRun(get_suite("ablate-stage1"), BENCH_SIZES["ci"], 1, tmp_path, fake).run()
    trains = fake.trains()
    assert [train.config.stage for train in trains] == [1, 2, 3, 2, 3] * 2  # two tasks
    for first in (0, 5):
        with_s1, without = trains[first + 1], trains[first + 3]
        assert with_s1.init == trains[first].out / "final"
        assert without.init is None
        assert with_s1.out != without.out
        assert with_s1.config == without.config  # the same recipe in stage 2


def test_arms_with_one_stage1_recipe_share_it_and_a_second_run_resumes(tmp_path, capsys, fake):
    suite = get_suite("ablate-substeps")
    SuiteRun(suite, BENCH_SIZES["ci"], 1, tmp_path, fake).run()
    trains = fake.trains()
    assert [train.config.stage for train in trains] == [1, 2, 3, 2, 3]
    assert trains[1].config.use_reasoning and not trains[3].config.use_reasoning
    assert not trains[4].config.use_reasoning
    again = type(fake)()
    SuiteRun(suite, BENCH_SIZES["ci"], 1, tmp_path, again).run()
    assert again.trains() == []  # every stage finished: skipped
    assert "skipped" in capsys.readouterr().out


def test_an_arm_naming_the_sizes_preset_shares_the_runs_of_one_naming_none(tmp_path, fake):
    """ablate-expert-size's 1x arm is aloha-sim's transfer-cube arm, trained once."""
    size = BENCH_SIZES["cpu"]
    run = SuiteRun(get_suite("aloha-sim"), size, 1, tmp_path, fake)
    plain, tiny = get_suite("aloha-sim").arms[0], get_suite("ablate-expert-size").arms[0]
    assert plain.policy is None and tiny.policy == size.preset == "tiny"
    task = "aloha-transfer-cube"
    assert run.arm_directory(tiny, task) == run.arm_directory(plain, task)
    larger = get_suite("ablate-expert-size").arms[1]
    assert run.arm_directory(larger, task) != run.arm_directory(plain, task)


def test_cross_embodiment_pretrains_without_the_hand_and_builds_its_head(tmp_path, fake):
    SuiteRun(get_suite("cross-embodiment"), BENCH_SIZES["cpu"], 1, tmp_path, fake).run()
    stage1 = fake.trains()[2]
    assert stage1.config.stage == 1 and not any("hand" in path.name for path in stage1.data)
    assert stage1.config.embodiments == ("aloha", "sawyer", "hand")
    assert fake.collects()[0].episodes == BENCH_SIZES["cpu"].episodes // 5  # a fifth
    assert all(train.config.embodiments == ("hand",) for train in fake.trains()[3:])


def test_a_position_arm_pretrains_its_expert_on_positions_in_its_own_stage1(tmp_path, fake):
    """ "predicted" / "oracle" reach stage 1 (its own run); "aux", a VLM head, does not."""
    arms = tuple(Arm(f"arm {use}", env_state=use) for use in ("none", "aux", "predicted"))
    suite = Suite("positions", "object positions", ("aloha-transfer-cube",), arms)
    SuiteRun(suite, BENCH_SIZES["ci"], 1, tmp_path, fake).run()
    stage1 = [train for train in fake.trains() if train.config.stage == 1]
    assert [train.config.env_state for train in stage1] == ["none", "predicted"]  # none & aux share
    later = [train.config.env_state for train in fake.trains() if train.config.stage != 1]
    assert later == ["none", "none", "aux", "aux", "predicted", "predicted"]


def test_the_two_cpu_sizes_are_distinct_entries_of_one_registry():
    assert DEMO_SIZES["cpu"] is RUN_SIZES["demo-cpu"]
    assert BENCH_SIZES["cpu"] is RUN_SIZES["bench-cpu"]
    assert DEMO_SIZES["ci"] is BENCH_SIZES["ci"] is RUN_SIZES["ci"]
    assert DEMO_SIZES["cpu"].steps == (500, 4000, 300)
    assert BENCH_SIZES["cpu"].steps == (1000, 4000, 500)
    assert {size.name for size in RUN_SIZES.values()} == set(RUN_SIZES)


def test_aggregate_uses_seed_spread_with_several_seeds_and_wilson_with_one():
    summaries = [
        {"episodes": 10, "successes": s, "success_rate": s / 10, "mean_max_reward": 1.0}
        for s in (2, 6)
    ]
    row = aggregate("t", "a", summaries)
    assert row["success_mean"] == pytest.approx(0.4)
    assert row["ci_method"].startswith("t over seeds")
    assert row["ci95"][0] == 0.0 and row["ci95"][1] == pytest.approx(1.0)  # wide: 2 seeds
    one = aggregate("t", "a", summaries[:1])
    assert one["ci_method"] == "Wilson over episodes"
    assert 0.0 < one["ci95"][0] < 0.2 < one["ci95"][1] < 0.6
    zeros = [{**summaries[0], "successes": 0, "success_rate": 0.0}] * 2
    low, high = aggregate("t", "a", zeros)["ci95"]
    assert low == 0.0 and 0.1 < high < 0.2  # agreeing seeds: the Wilson floor over 20 episodes


def test_arms_are_compared_with_the_tasks_first_arm_by_fishers_exact_test():
    def row(task: str, arm: str, successes: int) -> dict:
        return {
            "task": task,
            "arm": arm,
            "successes": successes,
            "episodes": 20,
            "success_mean": successes / 20,
        }

    rows = [
        row("t", SCRIPTED, 20),
        row("t", "50 demos", 4),
        row("t", "100 demos", 14),
        row("t", "same again", 4),
        row("u", "alone", 3),
    ]
    comparisons = compare_arms(rows)
    assert [(c["arm"], c["against"]) for c in comparisons] == [
        ("100 demos", "50 demos"),
        ("same again", "50 demos"),
    ]
    assert comparisons[0]["difference"] == pytest.approx(0.5)
    # 14/20 against 4/20: two-sided p = 0.0036 (the hypergeometric tail, both sides)
    assert 0.003 < comparisons[0]["fisher_p"] < 0.004
    assert comparisons[1]["fisher_p"] == pytest.approx(1.0)


def test_bad_arms_and_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="stages must include 2"):
        Arm("x", stages=(1, 3))
    with pytest.raises(ValueError, match="episodes_scale"):
        Arm("x", episodes_scale=0)
    assert main(["benchmark", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown benchmark suite 'nope'" in capsys.readouterr().err
    assert main(["benchmark", "aloha-sim", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert main(["benchmark", "aloha-sim", "--episodes", "0", "--out", str(tmp_path)]) == 2
    assert main(["benchmark", "--list"]) == 0
    assert "ablate-stage1" in capsys.readouterr().out


def test_a_failing_step_stops_the_suite_before_later_steps(tmp_path, fake):
    def execute(step):
        if step.label.startswith("stage"):
            raise ValueError("dataset broken")
        fake(step)

    with pytest.raises(StepFailed, match=r"stage 1 for with stage 1.*dataset broken"):
        SuiteRun(get_suite("ablate-stage1"), BENCH_SIZES["ci"], 1, tmp_path, execute).run()
    assert len(fake.evals()) == 1  # the scripted ceiling only
    assert not (tmp_path / "ablate-stage1" / "results.json").exists()


@pytest.fixture(scope="module")
def shared_out(tmp_path_factory):
    """One work directory for every suite, as a user's: identical runs are trained once."""
    return tmp_path_factory.mktemp("benchmarks")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SUITES))
def test_every_suite_end_to_end_at_ci_size(shared_out, name, capsys):
    suite = get_suite(name)
    argv = ["benchmark", name, "--size", "ci", "--seeds", "1", "--out", str(shared_out)]
    assert main(argv) == 0
    data = json.loads((shared_out / name / "results.json").read_text())
    assert data["command"] == "dexvla " + " ".join(argv) and data["machine"]["cpus"] >= 1
    rows = {(row["task"], row["arm"]): row for row in data["rows"]}
    for task in suite.tasks:
        for arm in (SCRIPTED, *(arm.name for arm in suite.arms)):
            assert rows[task, arm]["episodes"] == BENCH_SIZES["ci"].eval_episodes
    if any(1 in arm.stages for arm in suite.arms):
        assert list(shared_out.glob("runs/stage1/*/seed0/final/model.safetensors"))
    capsys.readouterr()
    assert main(argv) == 0  # resumes: every step is done
    out = capsys.readouterr().out
    trains = [
        line for line in out.splitlines() if line.startswith("[benchmark] stage ") and ": " in line
    ]
    assert trains and all(line.endswith("exists, skipped") for line in trains)


def test_results_name_the_sizes_stage_recipe_overrides(tmp_path, fake):
    path = SuiteRun(get_suite("ablate-stage1"), BENCH_SIZES["cpu"], 1, tmp_path, fake).run()
    assert '"prediction_type": "sample"' in path.read_text()
    path = SuiteRun(get_suite("ablate-stage1"), BENCH_SIZES["ci"], 1, tmp_path / "ci", fake).run()
    assert "overrides" not in path.read_text()  # the ci size has none


def test_report_only_rerenders_finished_evaluations_keeping_the_runs_provenance(
    tmp_path, fake, capsys
):
    suite, size = get_suite("ablate-stage1"), BENCH_SIZES["ci"]
    SuiteRun(suite, size, 1, tmp_path, fake, argv=["benchmark", "ablate-stage1"]).run()
    results = tmp_path / suite.name / "results.json"
    first = json.loads(results.read_text())
    first["timings_s"] = {"stage 1 for with stage 1 (stages 1-3) (seed 0)": 123.0}
    results.write_text(json.dumps(first))
    ran = type(fake)()
    SuiteRun(suite, size, 2, tmp_path, ran).report()  # seed 1 was never evaluated
    assert ran.calls == []
    again = json.loads(results.read_text())
    for key in ("command", "date", "finished", "git", "machine", "timings_s"):
        assert again[key] == first[key], key
    assert again["rendered"]["date"] >= first["finished"]
    assert again["rows"] == first["rows"] and again["seeds"] == 2
    left_out = "not finished, left out: evaluate with stage 1 (stages 1-3) on"
    assert left_out in capsys.readouterr().out
    assert "tables re-rendered" in (tmp_path / suite.name / "results.md").read_text()


def test_report_only_with_no_finished_evaluation_says_so_and_writes_nothing(tmp_path, capsys):
    argv = ["benchmark", "ablate-stage1", "--size", "ci", "--out", str(tmp_path), "--report-only"]
    assert main(argv) == 1
    assert "no finished evaluation of an arm" in capsys.readouterr().out
    assert not (tmp_path / "ablate-stage1" / "results.json").exists()


def test_report_only_without_earlier_results_says_the_provenance_is_unknown(tmp_path, fake):
    suite = get_suite("ablate-substeps")
    SuiteRun(suite, BENCH_SIZES["ci"], 1, tmp_path, fake).run()
    (tmp_path / suite.name / "results.json").unlink()
    path = SuiteRun(suite, BENCH_SIZES["ci"], 1, tmp_path, type(fake)()).report()
    data = json.loads((tmp_path / suite.name / "results.json").read_text())
    assert data["git"] is None and data["date"] == "unknown" and len(data["rows"]) == 3
    assert "no earlier results.json" in path.read_text()
