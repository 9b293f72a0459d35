"""`dexvla annotate` from the command line."""

from __future__ import annotations

import json

from dexvla.cli import main
from dexvla.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer

TRANSFER = "pick up the red cube with the right arm and hand it over to the left arm"


def test_annotate_labels_then_scores_a_dataset(tmp_path, make_episode, synthetic_aloha, capsys):
    episode = make_episode(0, length=400, image_hw=(2, 2), task=TRANSFER)
    episode.action, truth = synthetic_aloha("handover", 0, length=400)
    episode.substeps = [""] * 400
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        writer.add_episode(episode)
    assert main(["annotate", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"episodes": 1, "annotated": 1, "skipped": 0}
    assert set(LeRobotV3Dataset(tmp_path).lowdim(0)["substeps"]) == set(truth)
    assert main(["annotate", str(tmp_path), "--evaluate"]) == 0
    out = capsys.readouterr().out
    assert "agreement: 1.0" in out and "annotated: 0" in out


def test_errors_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["annotate", str(tmp_path / "empty")]) == 2
    assert "neither a LeRobot v3 dataset" in capsys.readouterr().err
    assert main(["annotate"]) == 2
    assert "give a dataset PATH or --sim-task TASK" in capsys.readouterr().err
