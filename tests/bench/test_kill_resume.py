"""bench/kill_resume.py at its tiniest size: killed runs resume and lose nothing.

Two kills per part (`--size mini`); the figures asserted are the counts, never a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kill_resume.py"


def fraction(text: str) -> tuple[int, int]:
    done, of = text.split()[0].split("/")
    return int(done), int(of)


def all_of(text: str) -> bool:
    done, of = fraction(text)
    return of > 0 and done == of


@pytest.mark.slow
def test_killed_runs_resume_and_lose_nothing(tmp_path):
    figures_path = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--part", "all", "--kills", "2", "--size", "mini",
         "--seed", "1", "--work", str(tmp_path / "work"), "--json", str(figures_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(figures_path.read_text())
    train = figures["train"]
    assert all_of(train["kills landed (of planned)"])
    assert all_of(train["resumes succeeded"])
    assert train["corrupt/half-written checkpoints loaded"] == 0
    for stage in (1, 2):
        assert train[f"stage {stage}: step count intact"] is True
        assert all_of(train[f"stage {stage}: logged losses equal"])
    for name in ("stage 1 final", "stage 2 final", "stage 2 last model", "stage 2 last ema",
                 "stage 2 last optimizer"):  # fmt: skip
        assert all_of(train[f"{name}: tensors bit-identical"]), name
    for part in ("collect", "eval"):
        got = figures[part]
        assert all_of(got["kills landed"]) and all_of(got["resumes succeeded"]), got
        assert (
            got["episodes lost"] == 0
            and got["episodes duplicated" if part == "collect" else "episodes recorded twice"] == 0
        ), got
    collect = figures["collect"]
    assert collect["dataset loads (LeRobotV3Dataset)"] == "yes"
    assert collect["episodes torn or differing"] == 0
    assert collect["orphan data files / temp files left"] == "0 / 0"
    evaluation = figures["eval"]
    assert evaluation["episodes.jsonl lines unparsable"] == 0
    assert evaluation["records differing from uninterrupted"] == 0
    assert evaluation["eval_info.json complete, all episodes"] is True
    disk = figures["disk-full"]
    assert disk["exit status"] != 0
    assert "no space left to save checkpoint" in disk["error line"]
    assert "is intact" in disk["error line"]
    assert disk["previous checkpoint intact"] is True
    assert disk["resumed from it and finished"] is True
