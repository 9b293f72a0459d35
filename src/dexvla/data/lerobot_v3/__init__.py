"""LeRobot v3.0 datasets: a crash-safe writer, a reader with random frame access, and the
sub-step patcher.

Choices made here (see docs/data.md): images are stored in the data parquet as LeRobot
`image` features (PNG bytes in a `{bytes, path}` struct, lossless; JPEG optional), not mp4;
each episode goes to its own data file and its own one-row episodes-table file (the commit
point), consolidated into one episodes file on close. The per-frame sub-step text is the
string column `substep`; the episode instruction is the task in `tasks.parquet`.
"""

from dexvla.data.images import IMAGE_FORMATS, decode_image
from dexvla.data.lerobot_v3.format import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_DIR,
    EPISODES_FILE,
    EPISODES_PATH,
    FOVY_INFO,
    INFO_FILE,
    STATS_FILE,
    TASKS_FILE,
    VIDEO_PATH,
    read_episode_rows,
    read_tasks,
)
from dexvla.data.lerobot_v3.reader import LeRobotV3Dataset
from dexvla.data.lerobot_v3.substeps import write_substeps
from dexvla.data.lerobot_v3.writer import LeRobotV3Writer

__all__ = [
    "CHUNKS_SIZE",
    "CODEBASE_VERSION",
    "DATA_PATH",
    "EPISODES_DIR",
    "EPISODES_FILE",
    "EPISODES_PATH",
    "FOVY_INFO",
    "IMAGE_FORMATS",
    "INFO_FILE",
    "STATS_FILE",
    "TASKS_FILE",
    "VIDEO_PATH",
    "LeRobotV3Dataset",
    "LeRobotV3Writer",
    "decode_image",
    "read_episode_rows",
    "read_tasks",
    "write_substeps",
]
