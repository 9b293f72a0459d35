"""Frames of an mp4 by timestamp, decoding from the nearest keyframe only (PyAV).

LeRobot v3 video features keep many episodes per mp4 and give each episode's start as
`from_timestamp` (seconds on the video's timeline): frame t of the episode is the frame shown at
`from_timestamp + t / fps`. Reading one frame seeks to the keyframe at or before it and decodes
forward to it, so its cost is at most one group of pictures, not the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dexvla.io import one_line


class VideoFile:
    """One open mp4; `frames(start, count, fps)` decodes `count` frames from `start` seconds.

    `decoded` counts the frames decoded so far (what a seek costs, for tests and benchmarks).
    """

    def __init__(self, path: Path) -> None:
        import av  # only video datasets need PyAV

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: video file missing")
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as error:
            raise ValueError(f"{self.path}: unreadable video ({one_line(error)})") from None
        if not self.container.streams.video:
            raise ValueError(f"{self.path}: no video stream")
        self.stream = self.container.streams.video[0]
        self.decoded = 0

    def frames(self, start: float, count: int, fps: float) -> np.ndarray:
        """uint8 (count, H, W, 3): the frames shown at start, start + 1/fps, ... (seconds)."""
        import av

        tolerance = 0.5 / fps
        time_base = self.stream.time_base
        out: list[np.ndarray] = []
        try:
            self.container.seek(int(max(start, 0.0) / time_base), stream=self.stream, backward=True)
            for frame in self.container.decode(self.stream):
                self.decoded += 1
                if frame.time is None or frame.time < start + len(out) / fps - tolerance:
                    continue
                if frame.time > start + len(out) / fps + tolerance:
                    break
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == count:
                    return np.stack(out)
        except av.FFmpegError as error:
            raise ValueError(
                f"{self.path}: cannot decode at {start:.3f} s ({one_line(error)})"
            ) from None
        raise ValueError(
            f"{self.path}: no frame at {start + len(out) / fps:.3f} s (needed {count} frames "
            f"at {fps} fps from {start:.3f} s, found {len(out)})"
        )
