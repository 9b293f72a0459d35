"""The artefacts and the 40 cases of `bench/bad_inputs.py`.

Placeholders in a case's argv and names ({DS}, {CKPT}, ...) are the case's own copies of the
artefacts; {OUT} is a fresh path and {FILE} a regular file (a directory that cannot be made:
the runs are root, so a chmod would not stop a write).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dexvla.embodiments import get_embodiment
from dexvla.io import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    read_json,
)
from dexvla.schema import ACTION, EMBODIMENT, STATE, TASK, Episode, image_key

ARTEFACTS = ("DS", "SAW", "HAND", "H5", "MP4", "CKPT", "OTHER", "S1")
DATA = "{DS}/data/chunk-000/file-000.parquet"
SIZE = 56  # camera pixels: the tiny policy's 4 tokens per camera
TRAIN = ["--steps", "1", "--batch-size", "2", "--image-size", "56x56", "--device", "cpu"]
EVAL = ["--task", "aloha-transfer-cube", "--episodes", "1", "--image-size", "56", "--out"]


@dataclass
class Case:
    """One bad input: a CLI argv or an API call, what its error must name, what it breaks."""

    kind: str
    names: tuple[str, ...]
    uses: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()
    api: Callable[[dict[str, Path]], Any] | None = None
    call: str = ""  # how the table shows an API call
    corrupt: Callable[[dict[str, Path]], Path | None] | None = None
    quick: bool = False


def episode(embodiment: str, seed: int, length: int = 12) -> Episode:
    """Random frames with sub-steps, enough for statistics and one training batch."""
    rng = np.random.default_rng(seed)
    spec = get_embodiment(embodiment)
    return Episode(
        embodiment=embodiment,
        task="move the cube",
        images={
            cam: rng.integers(0, 256, (length, SIZE, SIZE, 3), dtype=np.uint8)
            for cam in spec.cameras
        },
        state=rng.normal(size=(length, spec.state_dim)).astype(np.float32),
        action=rng.normal(size=(length, spec.action_dim)).astype(np.float32),
        substeps=[f"step {t // 4}" for t in range(length)],
        seed=seed,
    )


def write_mp4(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    import av

    def write(temp: Path) -> None:
        with av.open(str(temp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())

    atomic_write(path, write)


def build_artefacts(root: Path) -> None:
    """Every valid artefact the cases copy, under `root`."""
    import torch

    from dexvla.data.act_hdf5 import write_act_episode
    from dexvla.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer
    from dexvla.policy.configuration import get_policy_preset
    from dexvla.policy.modeling import DexVLAPolicy
    from dexvla.policy.processor import DexVLAProcessor
    from dexvla.stats import DatasetStats
    from dexvla.train.stage1 import Stage1Policy

    torch.manual_seed(0)
    for name, embodiment in (("DS", "aloha"), ("SAW", "sawyer"), ("HAND", "hand")):
        with LeRobotV3Writer(root / name, embodiment=embodiment, fps=50) as writer:
            for seed in range(2):
                writer.add_episode(episode(embodiment, seed))
    for seed in range(2):
        write_act_episode(root / "H5" / f"episode_{seed}.hdf5", episode("aloha", seed))
    frames = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    write_mp4(root / "MP4", frames)
    stats = DatasetStats.from_source(LeRobotV3Dataset(root / "DS"))
    for name, preset in (("CKPT", "tiny"), ("OTHER", "tiny-l")):
        config = get_policy_preset(preset)
        vlm = config.vlm.__class__(**{**config.vlm.__dict__, "image_size": (SIZE, SIZE)})
        config = config.replace(vlm=vlm)
        processor = DexVLAProcessor(config.vlm.image_size, config.embodiments, stats)
        DexVLAPolicy(config, processor=processor).save_pretrained(root / name)
    Stage1Policy(get_policy_preset("tiny")).save_final(root / "S1", stats, {"stage": 1})


# ------------------------------------------------------------------------------ corruption
def overwrite(path: Path, offset: int, count: int = 64) -> Path:
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\x5a" * min(count, len(data) - offset)
    atomic_write_bytes(path, bytes(data))
    return path


def truncate(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    atomic_write_bytes(path, data[: int(len(data) * fraction)])
    return path


def corrupt_column(path: Path, column: str) -> Path:
    """Overwrite the first data page of `column` in row group 0 (the header check fails)."""
    metadata = pq.ParquetFile(path).metadata.row_group(0)
    for index in range(metadata.num_columns):
        chunk = metadata.column(index)
        if chunk.path_in_schema.split(".list")[0] == column:
            return overwrite(path, chunk.data_page_offset, 32)
    raise KeyError(column)


def rewrite_column(path: Path, column: str, change: Callable[[pa.ChunkedArray], pa.Array]) -> Path:
    table = pq.read_table(path)
    index = table.column_names.index(column)
    table = table.set_column(index, column, change(table.column(column)))
    atomic_write_parquet(path, table)
    return path


def garbage_images(column: pa.ChunkedArray) -> pa.Array:
    rows = column.to_pylist()
    bad = [{"bytes": b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "path": None} for _ in rows]
    return pa.array(bad, type=column.type)


def short_actions(column: pa.ChunkedArray) -> pa.Array:
    return pa.array([row[:-1] for row in column.to_pylist()], pa.list_(pa.float32()))


def nan_rows(column: pa.ChunkedArray) -> pa.Array:
    rows = column.to_pylist()
    rows[3] = [float("nan")] * len(rows[3])
    return pa.array(rows, column.type)


def drop_hdf5(path: Path, name: str) -> Path:
    import h5py

    def write(temp: Path) -> None:
        shutil.copyfile(path, temp)
        with h5py.File(temp, "a") as handle:
            del handle[name]

    atomic_write(path, write)
    return path


def edit_json(path: Path, change: Callable[[dict], None]) -> Path:
    data = read_json(path)
    change(data)
    atomic_write_json(path, data)
    return path


def fmt(paths: dict[str, Path], text: str) -> Path:
    return Path(text.format(**{k: str(v) for k, v in paths.items()}))


# ------------------------------------------------------------------------------ API calls
def policy(paths: dict[str, Path]) -> Any:
    from dexvla.policy.modeling import DexVLAPolicy

    return DexVLAPolicy.from_pretrained(paths["CKPT"])


def observation(**changes: Any) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    obs: dict[str, Any] = {
        image_key(cam): rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        for cam in get_embodiment("aloha").cameras
    }
    obs.update({STATE: np.zeros(14, np.float32), TASK: "move the cube", EMBODIMENT: "aloha"})
    obs.update(changes)
    return {k: v for k, v in obs.items() if v is not None}


def act(**changes: Any) -> Callable[[dict[str, Path]], Any]:
    return lambda paths: policy(paths).select_action(observation(**changes))


def lerobot(paths: dict[str, Path], root: str = "DS") -> Any:
    from dexvla.data.lerobot_v3 import LeRobotV3Dataset

    return LeRobotV3Dataset(paths[root])


def stats_without_std(paths: dict[str, Path]) -> Path:
    return edit_json(
        paths["CKPT"] / "stats.json",
        lambda data: data["embodiments"]["aloha"][STATE].pop("std"),
    )


def other_config(paths: dict[str, Path]) -> Path:
    target = paths["CKPT"] / "config.json"
    atomic_write_bytes(target, (paths["OTHER"] / "config.json").read_bytes())
    return target


def image(size: tuple[int, ...]) -> np.ndarray:
    return np.zeros(size, np.uint8)


# fmt: off
def _api_cases() -> list[Case]:
    from dexvla.data.act_hdf5 import ActHdf5Dataset
    from dexvla.data.video import VideoFile
    from dexvla.stats import DatasetStats

    ckpt, high, left = ("CKPT",), image_key("cam_high"), image_key("cam_left_wrist")
    observe = "policy.select_action({{{}, ...}})"
    return [
        Case("image with 4 channels", ("cam_high",), ckpt, quick=True,
             api=act(**{high: image((SIZE, SIZE, 4))}),
             call=observe.format("cam_high: uint8 (56, 56, 4)")),
        Case("image of zero height", ("cam_high",), ckpt,
             api=act(**{high: image((0, SIZE, 3))}),
             call=observe.format("cam_high: uint8 (0, 56, 3)")),
        Case("grey image (H, W)", ("cam_left_wrist",), ckpt,
             api=act(**{left: image((SIZE, SIZE))}),
             call=observe.format("cam_left_wrist: uint8 (56, 56)")),
        Case("float image", ("cam_high", "float"), ckpt,
             api=act(**{high: np.zeros((SIZE, SIZE, 3), np.float32)}),
             call=observe.format("cam_high: float32 (56, 56, 3)")),
        Case("missing camera", ("cam_left_wrist",), ckpt, quick=True, api=act(**{left: None}),
             call="policy.select_action(observation without cam_left_wrist)"),
        Case("NaN state", (STATE,), ckpt, quick=True,
             api=act(**{STATE: np.full(14, np.nan, np.float32)}),
             call=observe.format("observation.state: [nan] * 14")),
        Case("state of 13 values", (STATE, "14"), ckpt,
             api=act(**{STATE: np.zeros(13, np.float32)}),
             call=observe.format("observation.state: (13,)")),
        Case("unknown embodiment", ("hand",), ckpt, api=act(**{EMBODIMENT: "hand"}),
             call=observe.format("embodiment: 'hand'")),
        Case("empty instruction", (TASK,), ckpt, api=act(**{TASK: " "}),
             call=observe.format("task: ' '")),
        Case("corrupt PNG in a dataset", (DATA, "cam_high"), ("DS",), quick=True,
             api=lambda p: lerobot(p).image(0, 0, "cam_high"),
             call="LeRobotV3Dataset(DS).image(0, 0, 'cam_high')",
             corrupt=lambda p: rewrite_column(fmt(p, DATA), high, garbage_images)),
        Case("wrong action width in a dataset", (DATA, "14"), ("DS",),
             api=lambda p: lerobot(p).lowdim(0), call="LeRobotV3Dataset(DS).lowdim(0)",
             corrupt=lambda p: rewrite_column(fmt(p, DATA), ACTION, short_actions)),
        Case("corrupt mp4", ("{MP4}",), ("MP4",), quick=True,
             api=lambda p: VideoFile(p["MP4"]).frames(0.0, 5, 10),
             call="VideoFile(MP4).frames(0.0, 5, 10)",
             corrupt=lambda p: overwrite(p["MP4"], 48, 4096)),
        Case("truncated HDF5", ("{H5}/episode_1.hdf5",), ("H5",),
             api=lambda p: ActHdf5Dataset(p["H5"]), call="ActHdf5Dataset(H5)",
             corrupt=lambda p: truncate(p["H5"] / "episode_1.hdf5")),
        Case("truncated safetensors", ("{CKPT}/model.safetensors",), ckpt, quick=True,
             api=policy, call="DexVLAPolicy.from_pretrained(CKPT)",
             corrupt=lambda p: truncate(p["CKPT"] / "model.safetensors")),
        Case("config.json of another preset", ("{CKPT}",), ("CKPT", "OTHER"), api=policy,
             call="DexVLAPolicy.from_pretrained(CKPT) with tiny-l's config.json",
             corrupt=other_config),
        Case("stats.json missing a key", ("{CKPT}/stats.json", "std"), ckpt,
             api=lambda p: DatasetStats.load(p["CKPT"] / "stats.json"),
             call="DatasetStats.load(CKPT/stats.json) without state std",
             corrupt=stats_without_std),
        Case("stage-1 artefact as a policy", ("{S1}",), ("S1",),
             api=lambda p: policy({"CKPT": p["S1"]}), call="DexVLAPolicy.from_pretrained(S1)"),
    ]


def _cli_cases() -> list[Case]:
    train1 = ("train", "--stage", "1", "--preset", "tiny-stage1", "--data")
    info = ("dataset", "info")
    collect = ("collect", "--task", "aloha-transfer-cube", "--episodes")
    eval_ckpt = ("eval", "--checkpoint", "{CKPT}")
    stage2 = ("train", "--stage", "2", "--preset", "tiny-stage2", "--init")
    episodes_table = "{DS}/meta/episodes/chunk-000/file-000.parquet"
    return [
        Case("corrupt parquet page (index column)", (DATA,), ("DS",), (*info, "{DS}"),
             corrupt=lambda p: corrupt_column(fmt(p, DATA), "index"), quick=True),
        Case("corrupt parquet page (state column)", (DATA,), ("DS",),
             (*train1, "{DS}", *TRAIN, "--out", "{OUT}"),
             corrupt=lambda p: corrupt_column(fmt(p, DATA), STATE)),
        Case("corrupt episodes table", (episodes_table,), ("DS",), (*info, "{DS}"),
             corrupt=lambda p: truncate(fmt(p, episodes_table))),
        Case("truncated tasks.parquet", ("{DS}/meta/tasks.parquet",), ("DS",), (*info, "{DS}"),
             corrupt=lambda p: truncate(p["DS"] / "meta/tasks.parquet"), quick=True),
        Case("truncated info.json", ("{DS}/meta/info.json",), ("DS",), (*info, "{DS}"),
             corrupt=lambda p: truncate(p["DS"] / "meta/info.json")),
        Case("wrong action width in a dataset", (DATA,), ("DS",), (*info, "{DS}"),
             corrupt=lambda p: rewrite_column(fmt(p, DATA), ACTION, short_actions)),
        Case("action shape of info.json", ("{DS}/meta/info.json", ACTION), ("DS",),
             (*train1, "{DS}", *TRAIN, "--out", "{OUT}"),
             corrupt=lambda p: edit_json(p["DS"] / "meta/info.json",
                                         lambda d: d["features"][ACTION].update(shape=[13]))),
        Case("truncated HDF5", ("{H5}/episode_0.hdf5",), ("H5",), (*info, "{H5}"),
             corrupt=lambda p: truncate(p["H5"] / "episode_0.hdf5"), quick=True),
        Case("HDF5 episode without /action", ("{H5}/episode_1.hdf5", "action"), ("H5",),
             (*info, "{H5}"), corrupt=lambda p: drop_hdf5(p["H5"] / "episode_1.hdf5", "action")),
        Case("NaN state in a dataset", (DATA, STATE), ("DS",),
             (*train1, "{DS}", *TRAIN, "--out", "{OUT}"),
             corrupt=lambda p: rewrite_column(fmt(p, DATA), STATE, nan_rows)),
        Case("dataset of another embodiment", ("{HAND}", "hand"), ("HAND",),
             (*train1, "{HAND}", *TRAIN, "--out", "{OUT}")),
        Case("collect into a dataset of another embodiment", ("{DS}",), ("DS",),
             ("collect", "--task", "sawyer-button-press", "--episodes", "1", "--out", "{DS}")),
        Case("unknown task (collect)", ("no-such-task",), (), quick=True,
             argv=("collect", "--task", "no-such-task", "--episodes", "1", "--out", "{OUT}")),
        Case("unknown task (eval)", ("no-such-task",), ("CKPT",),
             (*eval_ckpt, "--task", "no-such-task", "--episodes", "1", "--out", "{OUT}")),
        Case("unknown preset", ("no-such-preset",), ("DS",),
             ("train", "--stage", "2", "--preset", "no-such-preset", "--data", "{DS}",
              "--out", "{OUT}")),
        Case("--steps 0", ("steps",), ("DS",), (*train1, "{DS}", "--steps", "0", "--out", "{OUT}")),
        Case("--batch-size 0", ("batch_size",), ("DS",),
             (*train1, "{DS}", "--batch-size", "0", "--out", "{OUT}")),
        Case("--episodes -1 (collect)", ("episodes",), (), (*collect, "-1", "--out", "{OUT}"),
             quick=True),
        Case("--image-size 0 (collect)", ("image",), (),
             (*collect, "1", "--image-size", "0", "--out", "{OUT}")),
        Case("--episodes 0 (eval)", ("episodes",), ("CKPT",),
             (*eval_ckpt, "--task", "aloha-transfer-cube", "--episodes", "0", "--out", "{OUT}")),
        Case("missing --data dir", ("{OUT}/missing",), (),
             (*train1, "{OUT}/missing", *TRAIN, "--out", "{OUT}")),
        Case("missing dataset dir", ("{OUT}/missing",), (), (*info, "{OUT}/missing"),
             quick=True),
        Case("output dir not writable (collect)", ("{FILE}",), (),
             (*collect, "1", "--image-size", "56", "--out", "{FILE}/ds")),
        Case("output dir not writable (train)", ("{FILE}",), ("DS",),
             (*train1, "{DS}", *TRAIN, "--out", "{FILE}/run")),
        Case("stage-1 artefact where a policy is needed (eval)", ("{S1}",), ("S1",),
             ("eval", "--checkpoint", "{S1}", *EVAL, "{OUT}")),
        Case("stage-1 artefact where a policy is needed (train 3)", ("{S1}",), ("S1", "DS"),
             ("train", "--stage", "3", "--preset", "tiny-stage3", "--init", "{S1}", "--data",
              "{DS}", *TRAIN, "--out", "{OUT}")),
        Case("policy where a stage-1 artefact is needed", ("{CKPT}",), ("CKPT", "DS"),
             (*stage2, "{CKPT}", "--data", "{DS}", *TRAIN, "--out", "{OUT}")),
        Case("truncated stage-1 safetensors", ("{S1}/model.safetensors",), ("S1", "DS"),
             (*stage2, "{S1}", "--data", "{DS}", *TRAIN, "--out", "{OUT}"),
             corrupt=lambda p: truncate(p["S1"] / "model.safetensors")),
        Case("stats.json missing a key (eval)", ("{CKPT}/stats.json", "std"), ("CKPT",),
             (*eval_ckpt, *EVAL, "{OUT}"), corrupt=stats_without_std),
        Case("truncated config.json (eval)", ("{CKPT}/config.json",), ("CKPT",),
             (*eval_ckpt, *EVAL, "{OUT}"),
             corrupt=lambda p: truncate(p["CKPT"] / "config.json")),
        Case("truncated safetensors (serve)", ("{CKPT}/model.safetensors",), ("CKPT",),
             ("serve", "--checkpoint", "{CKPT}", "--port", "0"),
             corrupt=lambda p: truncate(p["CKPT"] / "model.safetensors")),
    ]
# fmt: on


CASES = _cli_cases() + _api_cases()
