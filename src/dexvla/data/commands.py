"""`dexvla dataset info DIR`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    dataset = subparsers.add_parser("dataset", help="inspect datasets (LeRobot v3, ACT HDF5)")
    actions = dataset.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    info = actions.add_parser("info", help="episodes, frames, cameras, sub-steps of a dataset")
    info.add_argument("path", type=Path, help="LeRobot v3 directory or directory of episode_*.hdf5")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=run_info)


def dataset_summary(path: Path) -> dict[str, Any]:
    """What `dexvla dataset info` prints."""
    from dexvla.data.sources import dataset_format, open_dataset

    dataset = open_dataset(path)
    substeps: dict[str, int] = {}
    tasks: set[str] = set()
    for i in range(dataset.num_episodes):
        low = dataset.lowdim(i)
        tasks.add(low["task"])
        for text in low["substeps"]:
            if text:
                substeps[text] = substeps.get(text, 0) + 1
    return {
        "path": str(path),
        "format": dataset_format(path),
        "episodes": dataset.num_episodes,
        "frames": dataset.num_frames,
        "embodiments": [dataset.embodiment],
        "cameras": list(dataset.cameras),
        "camera_fovy": dict(dataset.camera_fovy),
        "fps": dataset.fps,
        "tasks": sorted(tasks),
        "substeps": sorted(substeps),
        "substep_frames": sum(substeps.values()),
    }


def run_info(args: argparse.Namespace) -> int:
    summary = dataset_summary(args.path)
    if args.json:
        print(json.dumps(summary))
        return 0
    for key, value in summary.items():
        if isinstance(value, list):
            print(f"{key}: {len(value)}")
            for item in value:
                print(f"  - {item}")
        else:
            print(f"{key}: {value}")
    return 0
