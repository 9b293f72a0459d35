"""Load a dataset the way LeRobot's v3.0 reader does, in an interpreter that has LeRobot's
dependencies (pandas, HF `datasets`) but not necessarily this project.

    python tests/data/lerobot_compat.py DATASET_DIR INDEX [INDEX ...]

Prints one JSON object: per index the decoded state, action, task, sub-step and images (as
sums and shapes). With `lerobot` importable it reads through `LeRobotDataset` itself;
otherwise it repeats the calls LeRobot 0.4's `LeRobotDatasetMetadata` / `load_hf_dataset` make
(`pd.read_parquet` of tasks.parquet, `Dataset.from_parquet` of the episodes and data files with
the `datasets.Features` built from info.json). `test_lerobot_compat.py` runs it when
DEXVLA_LEROBOT_PYTHON names such an interpreter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _hf_features(features: dict):
    import datasets

    out = {}
    for key, feature in features.items():
        shape = tuple(feature["shape"])
        if feature["dtype"] == "video":
            continue
        if feature["dtype"] == "image":
            out[key] = datasets.Image()
        elif shape == (1,):
            out[key] = datasets.Value(dtype=feature["dtype"])
        elif len(shape) == 1:
            out[key] = datasets.Sequence(length=shape[0], feature=datasets.Value(feature["dtype"]))
        else:
            raise ValueError(f"feature {key}: shape {shape} not handled by this check")
    return datasets.Features(out)


def _with_datasets(root: Path, indices: list[int]) -> dict:
    import pandas as pd
    from datasets import Dataset

    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0", info["codebase_version"]
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    episodes = Dataset.from_parquet(
        [str(p) for p in sorted((root / "meta/episodes").glob("*/*.parquet"))]
    )
    required = {"episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index",
                "data/chunk_index", "data/file_index"}  # fmt: skip
    missing = required - set(episodes.column_names)
    assert not missing, missing
    data = Dataset.from_parquet(
        [str(p) for p in sorted((root / "data").glob("*/*.parquet"))],
        features=_hf_features(info["features"]),
    )
    assert len(data) == info["total_frames"], (len(data), info["total_frames"])
    json.loads((root / "meta/stats.json").read_text())
    items = {}
    for index in indices:
        item = data[index]
        items[str(index)] = {
            "state": list(item["observation.state"]),
            "action": list(item["action"]),
            "task": str(tasks.iloc[item["task_index"]].name),
            "substep": item.get("substep"),
            "episode_index": item["episode_index"],
            "images": {
                key: [int(np.asarray(value).sum()), list(np.asarray(value).shape)]
                for key, value in item.items()
                if key.startswith("observation.images.")
            },
        }
    return {"reader": "datasets+pandas", "frames": len(data), "items": items}


def _with_lerobot(root: Path, indices: list[int]) -> dict:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset("local/dexvla", root=root)
    items = {}
    for index in indices:
        item = dataset[index]
        items[str(index)] = {
            "state": item["observation.state"].tolist(),
            "action": item["action"].tolist(),
            "task": item["task"],
            "substep": item.get("substep"),
            "episode_index": int(item["episode_index"]),
            "images": {
                key: [int((value * 255).round().sum()), [*value.shape[1:], value.shape[0]]]
                for key, value in item.items()
                if key.startswith("observation.images.")
            },
        }
    return {"reader": "lerobot", "frames": dataset.num_frames, "items": items}


def main(argv: list[str]) -> int:
    root, indices = Path(argv[0]), [int(i) for i in argv[1:]]
    try:
        import lerobot.datasets.lerobot_dataset  # noqa: F401
    except Exception:  # any import failure means: use the dependency-level check
        print(json.dumps(_with_datasets(root, indices)))
    else:
        print(json.dumps(_with_lerobot(root, indices)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
