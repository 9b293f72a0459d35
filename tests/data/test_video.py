"""Video frames by timestamp: one frame's read decodes from its keyframe, not the whole file."""

from __future__ import annotations

import av
import numpy as np
import pytest

from dexvla.data.video import VideoFile

FPS = 10


def write_mp4(path, frames, gop):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def decode_all(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture
def video(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (1, 32, 48, 3)).astype(np.int64)
    frames = ((base + 4 * np.arange(60)[:, None, None, None]) % 256).astype(np.uint8)
    write_mp4(tmp_path / "clip.mp4", frames, gop=10)
    return tmp_path / "clip.mp4"


def test_frame_at_a_timestamp_equals_the_full_decode(video):
    full = decode_all(video)
    assert len(full) == 60
    reader = VideoFile(video)
    for t in (45, 3, 59, 0, 20):
        before = reader.decoded
        np.testing.assert_array_equal(reader.frames(t / FPS, 1, FPS)[0], full[t])
        assert reader.decoded - before <= 10  # from the keyframe at or before t: at most a GOP
    np.testing.assert_array_equal(reader.frames(1.7, 25, FPS), full[17:42])
    assert reader.decoded < 60 + 25


def test_missing_frames_and_files_are_reported(video, tmp_path):
    with pytest.raises(ValueError, match=r"clip\.mp4: no frame at 6\.000 s"):
        VideoFile(video).frames(5.5, 10, FPS)
    with pytest.raises(FileNotFoundError, match=r"nothing\.mp4: video file missing"):
        VideoFile(tmp_path / "nothing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match=r"bad\.mp4: unreadable video"):
        VideoFile(tmp_path / "bad.mp4")
