"""`dexvla learning-curve`: every kept checkpoint exported, evaluated, and put on one curve."""

import json

import torch

from dexvla.cli import main
from dexvla.experiments.curve import CurveConfig, learning_curve
from tests.train.test_stages import FAST, write_dataset


def test_kept_checkpoints_become_points_and_a_rerun_reuses_them(tmp_path, capsys):
    torch.set_num_threads(1)
    data = write_dataset(tmp_path / "data", "aloha", env_state=True)
    run = tmp_path / "run"
    rc = main(["train", "--stage", "2", "--preset", "tiny-stage2", "--data", str(data),
               "--out", str(run), "--steps", "4", "--keep-last", "0", "--env-state",
               "predicted", *FAST[:-4], "--save-every", "2", "--warmup-steps", "1"])  # fmt: skip
    assert rc == 0
    config = CurveConfig(
        run=run,
        data=(data,),
        task="aloha-transfer-cube",
        out=tmp_path / "curve",
        episodes=1,
        max_steps=3,
        image_size=32,
    )
    points = learning_curve(config)
    assert [(p["step"], p["samples_seen"]) for p in points] == [(2, 16), (4, 32)]
    assert all(p["episodes"] == 1 and 0 <= p["success_rate"] <= 1 for p in points)
    saved = json.loads((config.out / "curve.json").read_text())
    assert saved["points"] == points
    table = (config.out / "curve.md").read_text()
    assert "| 2 | 16 | 0/1 |" in table and "| 4 | 32 | 0/1 |" in table
    assert (config.out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    exported = config.out / "policies" / "step-000002" / "model.safetensors"
    stamp = exported.stat().st_mtime_ns

    rc = main(["learning-curve", "--run", str(run), "--data", str(data), "--task",
               "aloha-transfer-cube", "--out", str(config.out), "--episodes", "1",
               "--max-steps", "3", "--image-size", "32", "--workers", "1"])  # fmt: skip
    assert rc == 0
    assert exported.stat().st_mtime_ns == stamp  # the exported policy was reused
    assert "step      4 (32 samples): 0/1" in capsys.readouterr().out
