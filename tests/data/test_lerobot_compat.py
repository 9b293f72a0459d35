"""A dataset written here loads with LeRobot's reader (or its pandas/datasets calls).

Runs only when DEXVLA_LEROBOT_PYTHON names an interpreter with pandas and HF `datasets` (and
optionally `lerobot`); see docs/data.md for how it was run.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dexvla.data.lerobot_v3 import LeRobotV3Writer

PYTHON = os.environ.get("DEXVLA_LEROBOT_PYTHON")


@pytest.mark.skipif(not PYTHON, reason="set DEXVLA_LEROBOT_PYTHON to an env with lerobot deps")
def test_written_dataset_loads_with_lerobot_reader(tmp_path, make_episode):
    episodes = [make_episode(s, length=6) for s in range(2)]
    with LeRobotV3Writer(tmp_path, embodiment="aloha", fps=50) as writer:
        for episode in episodes:
            writer.add_episode(episode)
    script = Path(__file__).with_name("lerobot_compat.py")
    out = subprocess.run(
        [PYTHON, str(script), str(tmp_path), "0", "8"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["frames"] == 12
    for index, (e, t) in (("0", (0, 0)), ("8", (1, 2))):
        item = result["items"][index]
        np.testing.assert_allclose(item["state"], episodes[e].state[t], rtol=1e-6)
        np.testing.assert_allclose(item["action"], episodes[e].action[t], rtol=1e-6)
        assert item["task"] == episodes[e].task and item["episode_index"] == e
        assert item["substep"] == episodes[e].substeps[t]
        for cam, frames in episodes[e].images.items():
            total, shape = item["images"][f"observation.images.{cam}"]
            assert total == int(frames[t].astype(np.int64).sum()) and shape == [8, 10, 3]
