"""Collection throughput: frames/s recording ALOHA transfer-cube demos (three cameras), with one
worker and with two, side by side.

    python bench/bench_collect.py [--episodes 4] [--image-size 128]

Each configuration collects into a fresh temporary LeRobot v3 dataset with `dexvla.sim.collect`
(rendering, PNG encoding and writing included; process start-up included for the pool).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

from dexvla.sim.collect import collect
from dexvla.sim.registry import parse_image_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="aloha-transfer-cube")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--image-size", default="128")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    size = parse_image_size(args.image_size)
    print(
        f"task {args.task}, {args.episodes} episodes, "
        f"images {size[0]}x{size[1]}, cpus {os.cpu_count()}"
    )
    print("| workers | episodes | frames | seconds | frames/s |\n|---|---|---|---|---|")
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            report = collect(
                args.task,
                episodes=args.episodes,
                out=Path(tmp) / "ds",
                workers=workers,
                image_size=size,
                progress=False,
            )
        rate = report.frames / report.seconds
        print(
            f"| {workers} | {report.new_episodes} | {report.frames} | {report.seconds:.1f} "
            f"| {rate:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
