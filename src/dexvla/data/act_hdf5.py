"""ACT / DexVLA HDF5 episodes: one `episode_*.hdf5` file per demonstration.

Layout read (ACT's recorder, plus DexVLA's language fields)::

    /action                      (T, A) float
    /observations/qpos           (T, S) float   -> Episode.state
    /observations/qvel           (T, S) float   (optional, not used)
    /observations/images/<cam>   (T, H, W, 3) uint8, or (T, N) uint8 JPEG bytes zero-padded
                                 to a common N when the root attribute `compress` is true
    /compress_len                (num_cams, T) JPEG byte lengths (cams in sorted name order)
    /language_raw                (1,) bytes     -> Episode.task
    /substep_reasonings          (T,) bytes     -> Episode.substeps (empty strings if absent)

ACT's camera names (`top`, `left_wrist`, `right_wrist`) are mapped to the embodiment's
(`cam_high`, ...) when the embodiment lacks them; pass `camera_map` for other names.
"""

from __future__ import annotations

import os
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dexvla.data.images import decode_image, encode_image
from dexvla.embodiments import EMBODIMENTS, Embodiment, get_embodiment
from dexvla.io import atomic_write, one_line, reading
from dexvla.schema import Episode

ACT_CAMERA_ALIASES = {
    "top": "cam_high",
    "high": "cam_high",
    "left_wrist": "cam_left_wrist",
    "right_wrist": "cam_right_wrist",
}
EPISODE_GLOB = "episode_*.hdf5"


def _text(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _guess_embodiment(action_dim: int, state_dim: int, where: str) -> Embodiment:
    matches = [
        e for e in EMBODIMENTS.values() if (e.action_dim, e.state_dim) == (action_dim, state_dim)
    ]
    if len(matches) != 1:
        raise ValueError(
            f"{where}: cannot tell the embodiment from action dim {action_dim} and state dim "
            f"{state_dim} (candidates {[e.name for e in matches]}); pass embodiment="
        )
    return matches[0]


class _ActFile:
    """An open ACT HDF5 file with its camera mapping, checked for consistent lengths."""

    def __init__(
        self, path: Path, embodiment: str | None, camera_map: dict[str, str] | None
    ) -> None:
        self.path = Path(path)
        try:
            self.h5 = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path}: episode file missing") from None
        except OSError as error:
            raise ValueError(f"{self.path}: not a readable HDF5 file ({one_line(error)})") from None
        try:
            with self.reading():
                self._check(embodiment, camera_map)
        except BaseException:
            self.h5.close()
            raise

    def reading(self) -> AbstractContextManager[None]:
        """h5py's OSError on a corrupt block, as one ValueError line naming the file."""
        return reading(self.path, "corrupt HDF5 file", errors=(OSError,))

    def _dataset(self, name: str) -> h5py.Dataset:
        if name not in self.h5 or not isinstance(self.h5[name], h5py.Dataset):
            raise ValueError(f"{self.path}: missing dataset {name!r}")
        return self.h5[name]

    def _check(self, embodiment: str | None, camera_map: dict[str, str] | None) -> None:
        action, qpos = self._dataset("action"), self._dataset("observations/qpos")
        if action.ndim != 2 or qpos.ndim != 2:
            raise ValueError(f"{self.path}: /action and /observations/qpos must be 2-D")
        self.length = int(action.shape[0])
        if qpos.shape[0] != self.length:
            raise ValueError(
                f"{self.path}: /observations/qpos has {qpos.shape[0]} frames, "
                f"/action has {self.length}"
            )
        name = embodiment or self.h5.attrs.get("embodiment")
        self.spec = (
            get_embodiment(_text(name))
            if name
            else _guess_embodiment(action.shape[1], qpos.shape[1], str(self.path))
        )
        if action.shape[1] != self.spec.action_dim or qpos.shape[1] != self.spec.state_dim:
            raise ValueError(
                f"{self.path}: /action {action.shape} and /observations/qpos {qpos.shape} do not "
                f"fit embodiment {self.spec.name!r} ({self.spec.action_dim}, {self.spec.state_dim})"
            )
        self.compressed = bool(self.h5.attrs.get("compress", False))
        if "observations/images" not in self.h5:
            raise ValueError(f"{self.path}: missing group '/observations/images'")
        stored = sorted(self.h5["observations/images"].keys())
        mapping = dict(camera_map or {})
        for src, dst in ACT_CAMERA_ALIASES.items():
            if src in stored and src not in self.spec.cameras and dst in self.spec.cameras:
                mapping.setdefault(src, dst)
        self.cameras = {mapping.get(key, key): key for key in stored}
        missing = [cam for cam in self.spec.cameras if cam not in self.cameras]
        if missing:
            raise ValueError(
                f"{self.path}: camera(s) {missing} missing from /observations/images (has {stored})"
            )
        for cam, key in self.cameras.items():
            frames = self.h5[f"observations/images/{key}"]
            if frames.shape[0] != self.length:
                raise ValueError(
                    f"{self.path}: /observations/images/{key} has {frames.shape[0]} frames, "
                    f"/action has {self.length}"
                )
            expected = 2 if self.compressed else 4
            if frames.ndim != expected:
                raise ValueError(
                    f"{self.path}: /observations/images/{key} has shape {frames.shape}; expected "
                    f"{'(T, N) JPEG bytes' if self.compressed else '(T, H, W, 3)'} for camera {cam}"
                )
        self.compress_len = (
            np.asarray(self.h5["compress_len"]) if "compress_len" in self.h5 else None
        )
        self._stored_order = stored
        if "substep_reasonings" in self.h5:
            count = self.h5["substep_reasonings"].shape[0]
            if count != self.length:
                raise ValueError(
                    f"{self.path}: /substep_reasonings has {count} entries, /action has "
                    f"{self.length}"
                )

    def lowdim(self, task: str | None) -> dict[str, Any]:
        with self.reading():
            return self._lowdim(task)

    def _lowdim(self, task: str | None) -> dict[str, Any]:
        state = np.asarray(self._dataset("observations/qpos"), dtype=np.float32)
        action = np.asarray(self._dataset("action"), dtype=np.float32)
        for field, values in (("observations/qpos", state), ("action", action)):
            if not np.isfinite(values).all():
                raise ValueError(f"{self.path}: /{field} contains NaN or infinite values")
        substeps = (
            [_text(s) for s in self.h5["substep_reasonings"][()]]
            if "substep_reasonings" in self.h5
            else [""] * self.length
        )
        if task is None:
            task = (
                _text(np.asarray(self.h5["language_raw"][()]).reshape(-1)[0])
                if "language_raw" in self.h5
                else ""
            )
        reward = np.asarray(self.h5["reward"], dtype=np.float32) if "reward" in self.h5 else None
        return {
            "state": state,
            "action": action,
            "substeps": substeps,
            "task": task,
            "reward": reward,
            "env_state": None,
        }

    def image(self, t: int, cam: str) -> np.ndarray:
        key = self.cameras[cam]
        data = self.h5[f"observations/images/{key}"]
        where = f"{self.path} /observations/images/{key} frame {t}"
        with self.reading():
            buffer = np.asarray(data[t], dtype=np.uint8)
        if not self.compressed:
            return buffer
        if self.compress_len is not None:
            size = int(self.compress_len[self._stored_order.index(key), t])
            buffer = buffer[:size]
        return decode_image(buffer.tobytes(), where)

    def images(self, cam: str) -> np.ndarray:
        key = self.cameras[cam]
        if not self.compressed:
            with self.reading():
                return np.asarray(self.h5[f"observations/images/{key}"], dtype=np.uint8)
        return np.stack([self.image(t, cam) for t in range(self.length)])

    def close(self) -> None:
        self.h5.close()


def read_act_episode(
    path: Path,
    *,
    embodiment: str | None = None,
    camera_map: dict[str, str] | None = None,
    task: str | None = None,
) -> Episode:
    """Read one ACT/DexVLA HDF5 file into an `Episode` (validated)."""
    handle = _ActFile(Path(path), embodiment, camera_map)
    try:
        low = handle.lowdim(task)
        episode = Episode(
            embodiment=handle.spec.name,
            task=low["task"],
            images={cam: handle.images(cam) for cam in handle.spec.cameras},
            state=low["state"],
            action=low["action"],
            substeps=low["substeps"],
            reward=low["reward"],
        )
        try:
            episode.validate()
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        return episode
    finally:
        handle.close()


def write_act_episode(
    path: Path, episode: Episode, *, compress: bool = False, jpeg_quality: int = 90
) -> None:
    """Write an episode in the ACT/DexVLA HDF5 layout (atomically); used to make fixtures."""
    episode.validate()

    def write(temp: Path) -> None:
        with h5py.File(temp, "w") as root:
            root.attrs["sim"] = True
            root.attrs["compress"] = compress
            root.attrs["embodiment"] = episode.embodiment
            root.create_dataset("action", data=episode.action.astype(np.float32))
            root.create_dataset("observations/qpos", data=episode.state.astype(np.float32))
            root.create_dataset("observations/qvel", data=np.zeros_like(episode.state))
            cams = sorted(episode.images)
            if compress:
                encoded = {
                    cam: [encode_image(f, "jpeg", jpeg_quality) for f in episode.images[cam]]
                    for cam in cams
                }
                width = max(len(b) for frames in encoded.values() for b in frames)
                lengths = np.zeros((len(cams), len(episode)), dtype=np.int64)
                for row, cam in enumerate(cams):
                    padded = np.zeros((len(episode), width), dtype=np.uint8)  # (T, N)
                    for t, data in enumerate(encoded[cam]):
                        padded[t, : len(data)] = np.frombuffer(data, dtype=np.uint8)
                        lengths[row, t] = len(data)
                    root.create_dataset(f"observations/images/{cam}", data=padded)
                root.create_dataset("compress_len", data=lengths)
            else:
                for cam in cams:
                    root.create_dataset(
                        f"observations/images/{cam}",
                        data=episode.images[cam],
                        chunks=(1, *episode.images[cam].shape[1:]),
                    )
            root.create_dataset("language_raw", data=np.array([episode.task.encode()]))
            root.create_dataset(
                "substep_reasonings", data=np.array([s.encode() for s in episode.substeps])
            )
            if episode.reward is not None:
                root.create_dataset("reward", data=episode.reward.astype(np.float32))

    atomic_write(Path(path), write)


class ActHdf5Dataset:
    """A directory of `episode_*.hdf5` files, with the same access methods as
    `LeRobotV3Dataset` (`lowdim`, `image`, `images`, `episode`, ...).

    Files are ordered by the number in their name. HDF5 handles are opened lazily per process
    (safe with forked DataLoader workers) and kept in a small cache.
    """

    def __init__(
        self,
        root: Path,
        *,
        embodiment: str | None = None,
        camera_map: dict[str, str] | None = None,
        fps: int | None = None,
        max_open: int = 16,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: not a directory")

        def number(p: Path) -> tuple[int, str]:
            digits = p.stem.rsplit("_", 1)[-1]
            return (int(digits) if digits.isdigit() else -1, p.name)

        self.paths = sorted(self.root.glob(EPISODE_GLOB), key=number)
        if not self.paths:
            raise FileNotFoundError(f"{self.root}: no {EPISODE_GLOB} files")
        self.camera_map = camera_map
        self.max_open = max_open
        lengths, names, cameras = [], set(), None
        for path in self.paths:
            handle = _ActFile(path, embodiment, camera_map)
            lengths.append(handle.length)
            names.add(handle.spec.name)
            cams = tuple(sorted(handle.cameras))
            if cameras is not None and cams != cameras:
                raise ValueError(f"{path}: cameras {list(cams)} differ from {list(cameras)}")
            cameras = cams
            handle.close()
        if len(names) != 1:
            raise ValueError(f"{self.root}: episodes of several embodiments {sorted(names)}")
        self.embodiment = names.pop()
        self.spec = get_embodiment(self.embodiment)
        self.cameras = cameras or ()
        self.camera_fovy: dict[str, float] = {}  # ACT's HDF5 layout does not record it
        self.env_state_dim: int | None = None  # nor the simulator's object positions
        self.fps = int(fps or self.spec.fps)
        self.lengths = np.array(lengths, dtype=np.int64)
        self._lowdim: dict[int, dict[str, Any]] = {}
        self._pid = -1
        self._handles: dict[int, _ActFile] = {}

    @property
    def num_episodes(self) -> int:
        return len(self.paths)

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def episode_length(self, i: int) -> int:
        return int(self.lengths[i])

    def _handle(self, i: int) -> _ActFile:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if i not in self._handles:
            if len(self._handles) >= self.max_open:
                oldest = next(iter(self._handles))
                self._handles.pop(oldest).close()
            self._handles[i] = _ActFile(self.paths[i], self.embodiment, self.camera_map)
        return self._handles[i]

    def lowdim(self, i: int) -> dict[str, Any]:
        """Episode i's `state`, `action`, `substeps`, `task`, `reward`, `env_state` (always
        None) (cached)."""
        if i not in self._lowdim:
            self._lowdim[i] = self._handle(i).lowdim(None)
        return self._lowdim[i]

    def image(self, i: int, t: int, cam: str) -> np.ndarray:
        if not 0 <= t < self.lengths[i]:
            raise IndexError(f"frame {t} out of range for episode {i} ({self.lengths[i]} frames)")
        return self._handle(i).image(t, cam)

    def images(self, i: int, cam: str) -> np.ndarray:
        return self._handle(i).images(cam)

    def episode(self, i: int) -> Episode:
        return read_act_episode(
            self.paths[i], embodiment=self.embodiment, camera_map=self.camera_map
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, -1
        return state


def write_substeps(path: Path, substeps: list[str]) -> None:
    """Replace `/substep_reasonings` of one HDF5 episode: edit a copy, then rename over."""
    path = Path(path)
    with h5py.File(path, "r") as h5:
        length = int(h5["action"].shape[0])
    if len(substeps) != length:
        raise ValueError(f"{path}: {length} frames, got {len(substeps)} sub-steps")

    def write(temp: Path) -> None:
        shutil.copyfile(path, temp)
        with h5py.File(temp, "r+") as h5:
            if "substep_reasonings" in h5:
                del h5["substep_reasonings"]
            h5.create_dataset("substep_reasonings", data=np.array([s.encode() for s in substeps]))

    atomic_write(path, write)
