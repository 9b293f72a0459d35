"""`dexvla benchmark`: each suite's step plan, shared runs, resumption, tables and intervals."""

import json
from pathlib import Path

import pytest

from dexvla.cli import build_parser, main
from dexvla.experiments.pipeline import StepFailed
from dexvla.experiments.runner import SCRIPTED, SuiteRun, aggregate
from dexvla.experiments.suites import BENCH_SIZES, SUITES, Arm, get_suite


class FakeCommands:
    """Stands in for the CLI: records argv, checks it parses, writes what each step leaves."""

    def __init__(self, successes: int = 1) -> None:
        self.calls: list[list[str]] = []
        self.successes = successes
        self.parser = build_parser()

    def __call__(self, argv: list[str]) -> int:
        self.parser.parse_args(argv)  # every generated command line is a valid one
        self.calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        if argv[0] == "train":
            (out / "final").mkdir(parents=True, exist_ok=True)
            (out / "final" / "config.json").write_text("{}")
        elif argv[0] == "eval":
            episodes = int(argv[argv.index("--episodes") + 1])
            wins = episodes if "scripted" in argv else min(self.successes, episodes)
            summary = {
                "episodes": episodes,
                "successes": wins,
                "success_rate": wins / episodes,
                "stage_reached": {"1": {"name": "touched", "fraction": 0.5}},
                "mean_max_reward": 1.0,
            }
            out.mkdir(parents=True, exist_ok=True)
            (out / "eval_info.json").write_text(json.dumps({"summary": summary}))
        return 0

    def of(self, kind: str) -> list[list[str]]:
        return [argv for argv in self.calls if argv[0] == kind]


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize("name", list(SUITES))
def test_every_suite_plans_valid_commands_and_writes_results(tmp_path, name):
    suite = get_suite(name)
    fake = FakeCommands()
    path = SuiteRun(suite, BENCH_SIZES["ci"], 2, tmp_path, fake).run()
    evals = fake.of("eval")
    # one scripted ceiling per task, then one evaluation per arm, task and seed
    assert len(evals) == len(suite.tasks) * (1 + 2 * len(suite.arms))
    for argv in fake.of("train"):
        if argv[2] != "1":
            assert _flag(argv, "--data").count(",") == 0  # stages 2-3: the target task only
    data = json.loads((tmp_path / name / "results.json").read_text())
    assert {row["arm"] for row in data["rows"]} == {SCRIPTED, *(arm.name for arm in suite.arms)}
    assert data["git"] is None or len(data["git"]) >= 40
    assert (tmp_path / name / "results.png").stat().st_size > 1000
    assert path.read_text().count("\n| ") == len(data["rows"]) + 1  # and the header


def test_ablate_stage1_arms_differ_only_in_stage1(tmp_path):
    fake = FakeCommands()
    SuiteRun(get_suite("ablate-stage1"), BENCH_SIZES["ci"], 1, tmp_path, fake).run()
    trains = fake.of("train")
    assert [argv[2] for argv in trains] == ["1", "2", "3", "2", "3"]
    with_s1, without = trains[1], trains[3]
    assert _flag(with_s1, "--init") == str(Path(_flag(trains[0], "--out")) / "final")
    assert _flag(without, "--init") is None
    assert _flag(with_s1, "--out") != _flag(without, "--out")


def test_arms_with_one_stage1_recipe_share_it_and_a_second_run_resumes(tmp_path, capsys):
    fake = FakeCommands()
    suite = get_suite("ablate-substeps")
    SuiteRun(suite, BENCH_SIZES["ci"], 1, tmp_path, fake).run()
    assert [argv[2] for argv in fake.of("train")] == ["1", "2", "3", "2", "3"]
    assert "--no-reasoning" in fake.of("train")[3] and "--no-reasoning" not in fake.of("train")[1]
    again = FakeCommands()
    SuiteRun(suite, BENCH_SIZES["ci"], 1, tmp_path, again).run()
    assert again.of("train") == []  # every stage finished: skipped
    assert "skipped" in capsys.readouterr().out


def test_cross_embodiment_pretrains_without_the_hand_and_builds_its_head(tmp_path):
    fake = FakeCommands()
    SuiteRun(get_suite("cross-embodiment"), BENCH_SIZES["cpu"], 1, tmp_path, fake).run()
    stage1 = fake.of("train")[2]
    assert stage1[2] == "1" and "hand" not in _flag(stage1, "--data")
    assert _flag(stage1, "--embodiments") == "aloha,sawyer,hand"
    few_shot = [_flag(argv, "--episodes") for argv in fake.of("collect")]
    assert few_shot[0] == "10"  # a fifth of 50 hand demonstrations
    assert all(_flag(argv, "--embodiments") == "hand" for argv in fake.of("train")[3:])


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


def test_a_failing_step_stops_the_suite_before_later_steps(tmp_path):
    fake = FakeCommands()

    def command(argv):
        return 3 if argv[0] == "train" else fake(argv)

    with pytest.raises(StepFailed, match="stage 1 for with stage 1"):
        SuiteRun(get_suite("ablate-stage1"), BENCH_SIZES["ci"], 1, tmp_path, command).run()
    assert len(fake.of("eval")) == 1  # the scripted ceiling only
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
    assert "dexvla train" not in capsys.readouterr().out
