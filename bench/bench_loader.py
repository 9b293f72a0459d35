"""Training-sample loading at the 2b sizes: the old path vs the new, side by side in one run.

Builds two small LeRobot v3 datasets itself (3 cameras at 480x640, `--episodes` x `--frames`):
one with PNG images in the parquet (written by `LeRobotV3Writer`), one with the cameras as mp4
video, several episodes per file with `from_timestamp`, as LeRobot writes them (libx264, a
keyframe every 2 frames like LeRobot's encoder). Then it draws random samples with
`ChunkWindows` on one thread (what one DataLoader worker does) and collates them in batches:

* old: float32 (3, 480, 640) images per camera (about 1 GB per 96-sample batch); PNG frames
  from 32-frame row groups, decoded by Pillow; video clips decoded whole-file per (episode,
  camera), 4 cached (`OldReader`, `FullResFloatWindows`: the old code, kept here).
* new: uint8 images resized in the worker to the 2b policy's 252x308 (`image_size`); PNG row
  groups of about one frame, decoded by FFmpeg; video frames read by seeking to their
  timestamp (PyAV).

It prints samples/s per worker for each, the ratio, and the projection to `--workers` workers
against what an H100 consumes at the 2b sizes (`--gpu-rate`, ~65 samples/s; goal >= 15 per
worker).

    nice .venv/bin/python bench/bench_loader.py [--episodes 4] [--frames 100] [--samples 96]
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import imageio.v3 as iio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from dexvla.data.lerobot_v3 import (
    EPISODES_FILE,
    INFO_FILE,
    TASKS_FILE,
    VIDEO_PATH,
    LeRobotV3Dataset,
    LeRobotV3Writer,
)
from dexvla.data.lerobot_v3.format import tasks_table
from dexvla.data.windows import ChunkWindows, collate_windows
from dexvla.embodiments import get_embodiment
from dexvla.io import atomic_write_json, atomic_write_parquet, read_json
from dexvla.policy.configuration import get_vlm_preset
from dexvla.schema import Episode, image_key
from dexvla.stats import DatasetStats, Normalizer

EMBODIMENT = "aloha"
TASK = "pick up the cube"


def camera_frames(rng: np.random.Generator, length: int, height: int, width: int) -> np.ndarray:
    """Moving gradients with sensor noise: PNG sizes like camera images, (T, H, W, 3) uint8."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 255, 3)
    noise = rng.normal(0, 4, (4, height, width, 3)).astype(np.float32)
    frames = np.empty((length, height, width, 3), np.uint8)
    for t in range(length):
        image = np.stack([xx + 3 * t + phase[0], yy + 2 * t + phase[1], (xx + yy) / 2 + phase[2]])
        image = (image % 256).transpose(1, 2, 0) + noise[t % len(noise)]
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


def synthetic_episodes(episodes: int, frames: int, size: tuple[int, int]) -> list[Episode]:
    spec = get_embodiment(EMBODIMENT)
    rng = np.random.default_rng(0)
    return [
        Episode(
            embodiment=EMBODIMENT,
            task=TASK,
            images={cam: camera_frames(rng, frames, *size) for cam in spec.cameras},
            state=rng.normal(size=(frames, spec.state_dim)).astype(np.float32),
            action=rng.normal(size=(frames, spec.action_dim)).astype(np.float32),
            substeps=["reach the cube"] * frames,
            seed=e,
        )
        for e in range(episodes)
    ]


def write_png_dataset(root: Path, episodes: list[Episode]) -> Path:
    with LeRobotV3Writer(root, embodiment=EMBODIMENT, fps=get_embodiment(EMBODIMENT).fps) as w:
        for episode in episodes:
            w.add_episode(episode)
    return root


def with_row_groups(source: Path, root: Path, frames_per_group: int) -> Path:
    """A copy of a PNG dataset whose data files have `frames_per_group` frames a row group."""
    shutil.copytree(source, root)
    for path in (root / "data").rglob("*.parquet"):
        atomic_write_parquet(path, pq.read_table(path), row_group_size=frames_per_group)
    return root


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 2
        stream.options = {"crf": "23"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_video_dataset(root: Path, png: Path, episodes: list[Episode]) -> Path:
    """The PNG dataset's frames as one mp4 per camera and one data file, LeRobot's way."""
    fps = get_embodiment(EMBODIMENT).fps
    info = read_json(png / INFO_FILE)
    rows, tables, start = [], [], 0
    for e, episode in enumerate(episodes):
        table = pq.read_table(png / f"data/chunk-000/file-{e:03d}.parquet")
        keys = [k for k in table.column_names if k.startswith("observation.images.")]
        tables.append(table.drop_columns(keys))
        row = {
            "episode_index": e,
            "tasks": [TASK],
            "length": len(episode),
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": start,
            "dataset_to_index": start + len(episode),
        }
        for cam in episode.images:
            row[f"videos/{image_key(cam)}/chunk_index"] = 0
            row[f"videos/{image_key(cam)}/file_index"] = 0
            row[f"videos/{image_key(cam)}/from_timestamp"] = start / fps
            row[f"videos/{image_key(cam)}/to_timestamp"] = (start + len(episode)) / fps
        rows.append(row)
        start += len(episode)
    for cam in episodes[0].images:
        path = root / VIDEO_PATH.format(video_key=image_key(cam), chunk_index=0, file_index=0)
        write_mp4(path, np.concatenate([e.images[cam] for e in episodes]), fps)
        info["features"][image_key(cam)]["dtype"] = "video"
    data = pa.concat_tables(tables)
    atomic_write_parquet(root / "data/chunk-000/file-000.parquet", data)
    atomic_write_parquet(root / EPISODES_FILE, pa.Table.from_pylist(rows))
    atomic_write_parquet(root / TASKS_FILE, tasks_table([TASK]))
    info.update(video_path=VIDEO_PATH, total_frames=start)
    atomic_write_json(root / INFO_FILE, info)
    return root


class OldReader:
    """The old frame reads, around a `LeRobotV3Dataset` for everything else.

    PNG: the frame's whole 32-frame row group read, then Pillow's decode (the old reader cached
    64 groups, which on a real dataset of thousands of groups a random sampler rarely hits; on
    this tiny one it would hold everything, so it is left out). Video: the whole mp4 decoded
    (imageio-ffmpeg) and the episode's clip kept, 4 (episode, camera) clips cached.
    """

    def __init__(self, source: LeRobotV3Dataset) -> None:
        self.source = source
        self.clips: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)

    def image(self, i: int, t: int, cam: str) -> np.ndarray:
        feature = image_key(cam)
        if self.source.features[feature]["dtype"] == "video":
            return self.clip(i, cam)[t]
        handle = pq.ParquetFile(self.source.data_file(i))
        row, group = self.source.frame_offset(i) + t, 0
        while (group + 1) * handle.metadata.row_group(0).num_rows <= row:
            group += 1
        column = handle.read_row_group(group, columns=[feature]).column(0)
        value = column[row - group * handle.metadata.row_group(0).num_rows].as_py()
        with Image.open(io.BytesIO(value["bytes"])) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)

    def clip(self, i: int, cam: str) -> np.ndarray:
        key = (i, cam)
        if key not in self.clips:
            row, feature = self.source.rows[i], image_key(cam)
            path = self.source.root / VIDEO_PATH.format(
                video_key=feature, chunk_index=0, file_index=0
            )
            first = round(float(row[f"videos/{feature}/from_timestamp"]) * self.source.fps)
            self.clips[key] = iio.imread(path)[first : first + self.source.episode_length(i)]
            if len(self.clips) > 4:
                self.clips.popitem(last=False)
        self.clips.move_to_end(key)
        return self.clips[key]


class FullResFloatWindows(ChunkWindows):
    """The old sample: float32 (3, H, W) in [0, 1] at the camera's resolution."""

    def frame(self, episode: int, t: int, cam: str) -> torch.Tensor:
        image = self.source.image(episode, t, cam)
        chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        return torch.from_numpy(chw * np.float32(1 / 255))


def samples_per_second(windows: ChunkWindows, samples: int, batch_size: int) -> float:
    """Random samples, collated `batch_size` at a time, on one thread: one worker's rate."""
    order = np.random.default_rng(1).permutation(len(windows))
    windows[int(order[-1])]  # open files and read the episode's low-dim data outside the clock
    start = time.perf_counter()
    for first in range(0, samples, batch_size):
        count = min(batch_size, samples - first)
        collate_windows([windows[int(i)] for i in order[first : first + count]])
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--samples", type=int, default=96, help="samples per PNG/new measure")
    parser.add_argument("--old-video-samples", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=8, help="workers for the projection")
    parser.add_argument("--gpu-rate", type=float, default=65.0, help="samples/s an H100 takes")
    parser.add_argument("--vlm", default="qwen2-vl-2b", help="VLM preset giving the image size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = get_vlm_preset(args.vlm).image_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        episodes = synthetic_episodes(args.episodes, args.frames, (480, 640))
        png = write_png_dataset(root / "png", episodes)
        old_png = with_row_groups(png, root / "png-32", 32)
        video = write_video_dataset(root / "video", png, episodes)
        del episodes
        print(
            f"datasets built in {time.perf_counter() - t0:.0f} s: {args.episodes} episodes x "
            f"{args.frames} frames, 3 cameras at 480x640; policy images {size[0]}x{size[1]}"
        )
        group = pq.ParquetFile(png / "data/chunk-000/file-000.parquet").metadata.row_group(0)
        print(f"new PNG data files: {group.num_rows} frame(s) per row group (old: 32)")

        def windows(source: Any, kind: type[ChunkWindows], **kw: Any) -> ChunkWindows:
            norm = Normalizer(DatasetStats.from_source(LeRobotV3Dataset(png)))
            return kind(source, chunk_size=50, normalizer=norm, **kw)

        cases: dict[str, tuple[Callable[[], ChunkWindows], Callable[[], ChunkWindows], int]] = {
            "LeRobot v3 PNG": (
                lambda: windows(OldReader(LeRobotV3Dataset(old_png)), FullResFloatWindows),
                lambda: windows(LeRobotV3Dataset(png), ChunkWindows, image_size=size),
                args.samples,
            ),
            "LeRobot v3 video": (
                lambda: windows(OldReader(LeRobotV3Dataset(video)), FullResFloatWindows),
                lambda: windows(LeRobotV3Dataset(video), ChunkWindows, image_size=size),
                args.old_video_samples,
            ),
        }
        print(
            f"\n{'dataset':<18} {'old samples/s':>14} {'new samples/s':>14} {'new/old':>8} "
            f"{args.workers:>3} workers  vs GPU {args.gpu_rate:.0f}/s"
        )
        for name, (old, new, old_samples) in cases.items():
            old_rate = samples_per_second(old(), old_samples, args.batch_size)
            new_rate = samples_per_second(new(), args.samples, args.batch_size)
            projected = new_rate * args.workers
            print(
                f"{name:<18} {old_rate:>14.2f} {new_rate:>14.1f} {new_rate / old_rate:>7.1f}x "
                f"{projected:>11.0f}/s  {projected / args.gpu_rate:>5.2f}x of the GPU"
            )
        batch_old = args.batch_size * 3 * 3 * 480 * 640 * 4 / 2**30
        batch_new = args.batch_size * 3 * 3 * size[0] * size[1] / 2**30
        print(
            f"\nimage bytes per {args.batch_size}-sample batch: old {batch_old:.2f} GiB, "
            f"new {batch_new * 1024:.0f} MiB ({batch_old / batch_new:.0f}x less)"
        )


if __name__ == "__main__":
    main()
