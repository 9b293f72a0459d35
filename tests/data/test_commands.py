"""`dexvla dataset info` from the command line."""

from __future__ import annotations

import json

from dexvla.cli import main
from dexvla.data.act_hdf5 import write_act_episode
from dexvla.data.lerobot_v3 import LeRobotV3Writer


def test_dataset_info_json(tmp_path, make_episode, capsys):
    with LeRobotV3Writer(tmp_path / "lr", embodiment="aloha", fps=50) as writer:
        for s in range(2):
            writer.add_episode(make_episode(s, length=8))
    for s in range(3):
        write_act_episode(tmp_path / "h5" / f"episode_{s}.hdf5", make_episode(s, length=5))
    assert main(["dataset", "info", str(tmp_path / "lr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "lerobot_v3"
    assert (info["episodes"], info["frames"], info["fps"]) == (2, 16, 50)
    assert info["embodiments"] == ["aloha"]
    assert info["cameras"] == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    assert info["substeps"] == sorted(
        {f"step {t // 4} of episode {s}" for s in range(2) for t in range(8)}
    )
    assert main(["dataset", "info", str(tmp_path / "h5"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["episodes"], info["frames"]) == ("act_hdf5", 3, 15)
    assert main(["dataset", "info", str(tmp_path / "h5")]) == 0
    assert "episodes: 3" in capsys.readouterr().out


def test_errors_exit_2(tmp_path, capsys):
    assert main(["dataset", "info", str(tmp_path / "missing")]) == 2
    assert "no such dataset" in capsys.readouterr().err
