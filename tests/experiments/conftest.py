"""`fake`: a stand-in for running pipeline steps that records them and writes what each leaves."""

from __future__ import annotations

import json

import pytest

from dexvla.experiments.pipeline import Collect, Evaluate, Step, Train


class FakeSteps:
    """Records every step it is given; a Train step leaves final/config.json and an Evaluate
    step eval_info.json (the scripted expert wins every episode, a policy `successes`)."""

    def __init__(self, successes: int = 1) -> None:
        self.calls: list[Step] = []
        self.successes = successes

    def __call__(self, step: Step) -> None:
        self.calls.append(step)
        if isinstance(step, Train):
            step.final.mkdir(parents=True, exist_ok=True)
            (step.final / "config.json").write_text("{}")
        elif isinstance(step, Evaluate):
            episodes = step.config.episodes
            scripted = step.config.policy == "scripted"
            wins = episodes if scripted else min(self.successes, episodes)
            summary = {
                "episodes": episodes,
                "successes": wins,
                "success_rate": wins / episodes,
                "success_ci95": [0.0, 1.0],
                "stage_reached": {"1": {"name": "touched", "fraction": 0.5}},
                "mean_max_reward": 1.0,
            }
            step.out.mkdir(parents=True, exist_ok=True)
            (step.out / "eval_info.json").write_text(json.dumps({"summary": summary}))

    def trains(self) -> list[Train]:
        return [step for step in self.calls if isinstance(step, Train)]

    def evals(self) -> list[Evaluate]:
        return [step for step in self.calls if isinstance(step, Evaluate)]

    def collects(self) -> list[Collect]:
        return [step for step in self.calls if isinstance(step, Collect)]


@pytest.fixture
def fake() -> FakeSteps:
    return FakeSteps()
