"""Training samples: one frame's observation and the action chunk that follows it.

For frame t of an episode of length T, a sample holds the frame's images, its z-scored state,
the min-max-normalised actions t .. t+Hc-1, and `action_is_pad` marking steps past the
episode's end. Images are uint8 (3, h, w), resized here (in the DataLoader worker) to
`image_size`, the policy's, by `dexvla.imaging.resize_images`, the function the policy itself
resizes with; they stay uint8 (a quarter of float32's bytes, and far fewer pixels than the
camera's) until the policy converts them on its device. Without `image_size` they keep the
dataset's size. Padded steps repeat the episode's last action (`pad="last"`, the default: a
robot that holds its final command) or are zeros in normalised units (`pad="zero"`); either way
the loss masks them. With `env_state=True` a sample also holds `ENV_STATE`, the frame's
simulator object positions, float32 (E,) in raw metres (not normalised: a privileged training
aid, recorded by simulators only). `collate_windows` stacks samples into the batch layout of
docs/interfaces.md; `MixtureDataset` with `EmbodimentBatchSampler` (in `dexvla.data.sampler`)
mixes datasets by weight with one embodiment per batch (stage 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dexvla.data.sources import EpisodeSource
from dexvla.imaging import resize_images
from dexvla.schema import (
    ACTION,
    ACTION_IS_PAD,
    EMBODIMENT,
    ENV_STATE,
    STATE,
    SUBSTEP,
    TASK,
    image_key,
)
from dexvla.stats import Normalizer

PAD_MODES = ("last", "zero")


class ChunkWindows(Dataset):
    """Every frame of `source` (or of the listed `episodes`) as a training sample.

    `image_size` (h, w): the size the policy sees; images are resized to it here, in the
    DataLoader worker. None keeps the dataset's size. `env_state`: add frame t's `ENV_STATE`
    (raw) to each sample; the source must record it.
    """

    def __init__(
        self,
        source: EpisodeSource,
        *,
        chunk_size: int,
        normalizer: Normalizer,
        pad: str = "last",
        cameras: Sequence[str] | None = None,
        episodes: Sequence[int] | None = None,
        image_size: tuple[int, int] | None = None,
        env_state: bool = False,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
        self.source = source
        self.embodiment = source.embodiment
        self.chunk_size = chunk_size
        self.normalizer = normalizer
        self.pad = pad
        if image_size is not None and (len(image_size) != 2 or min(image_size) <= 0):
            raise ValueError(f"image_size must be positive (height, width), got {image_size}")
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        if env_state and source.env_state_dim is None:
            name = getattr(source, "root", type(source).__name__)
            raise ValueError(
                f"{name}: env_state=True but the dataset records no {ENV_STATE!r} "
                "(only simulated datasets recorded with object positions have it)"
            )
        self.env_state = env_state
        self.cameras = tuple(cameras) if cameras is not None else tuple(source.cameras)
        missing = [cam for cam in self.cameras if cam not in source.cameras]
        if missing:
            raise KeyError(f"cameras {missing} not in dataset (has {list(source.cameras)})")
        self.episodes = np.asarray(
            list(episodes) if episodes is not None else range(source.num_episodes), np.int64
        )
        lengths = np.array([source.episode_length(int(i)) for i in self.episodes], np.int64)
        self.ends = np.cumsum(lengths)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def locate(self, index: int) -> tuple[int, int]:
        """Sample index -> (episode index in the source, frame index)."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range ({len(self)} samples)")
        k = int(np.searchsorted(self.ends, index, side="right"))
        start = int(self.ends[k - 1]) if k else 0
        return int(self.episodes[k]), index - start

    def frame(self, episode: int, t: int, cam: str) -> torch.Tensor:
        """Frame t of `episode` from `cam` as the batch holds it: uint8 (3, h, w)."""
        image = self.source.image(episode, t, cam)  # (H, W, 3) uint8, maybe read-only
        hwc = torch.from_numpy(image if image.flags.writeable else image.copy())
        chw = hwc.permute(2, 0, 1)  # (3, H, W), channels-last in memory: the resize's fast case
        if self.image_size is not None:
            chw = resize_images(chw[None], self.image_size)[0]
        return chw.contiguous()

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode, t = self.locate(int(index))
        low = self.source.lowdim(episode)
        actions = low["action"][t : t + self.chunk_size]
        valid = len(actions)
        norm_actions = self.normalizer.normalize(ACTION, actions, self.embodiment)
        if valid < self.chunk_size:
            fill = norm_actions[-1] if self.pad == "last" else np.zeros_like(norm_actions[-1])
            norm_actions = np.concatenate(
                [norm_actions, np.repeat(fill[None], self.chunk_size - valid, axis=0)]
            )
        is_pad = np.arange(self.chunk_size) >= valid
        sample: dict[str, Any] = {
            image_key(cam): self.frame(episode, t, cam) for cam in self.cameras
        }
        state = self.normalizer.normalize(STATE, low["state"][t], self.embodiment)
        sample.update(
            {
                STATE: torch.from_numpy(state),
                ACTION: torch.from_numpy(np.ascontiguousarray(norm_actions, dtype=np.float32)),
                ACTION_IS_PAD: torch.from_numpy(is_pad),
                TASK: low["task"],
                SUBSTEP: low["substeps"][t],
                EMBODIMENT: self.embodiment,
                "episode_index": episode,
                "frame_index": t,
            }
        )
        if self.env_state:
            sample[ENV_STATE] = torch.from_numpy(np.array(low["env_state"][t], dtype=np.float32))
        return sample


def collate_windows(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch: tensors stacked, strings as lists, indices as int64."""
    if not samples:
        raise ValueError("collate_windows: empty batch")
    embodiments = {s[EMBODIMENT] for s in samples}
    if len(embodiments) != 1:
        raise ValueError(f"collate_windows: one embodiment per batch, got {sorted(embodiments)}")
    batch: dict[str, Any] = {}
    for key, value in samples[0].items():
        values = [s[key] for s in samples]
        if isinstance(value, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(value, str):
            batch[key] = values
        else:
            batch[key] = torch.as_tensor(values, dtype=torch.int64)
    return batch


class MixtureDataset(Dataset):
    """Several `ChunkWindows` side by side, with a weight each (for `EmbodimentBatchSampler`)."""

    def __init__(self, datasets: Sequence[ChunkWindows], weights: Sequence[float]) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise ValueError("MixtureDataset: need one weight per dataset, at least one dataset")
        weights_array = np.asarray(weights, dtype=np.float64)
        if (weights_array < 0).any() or weights_array.sum() <= 0:
            raise ValueError(f"MixtureDataset: weights must be >= 0, not all 0; got {weights}")
        empty = [i for i, d in enumerate(datasets) if len(d) == 0 and weights_array[i] > 0]
        if empty:
            raise ValueError(f"MixtureDataset: datasets {empty} are empty but have weight")
        self.datasets = list(datasets)
        self.weights = weights_array / weights_array.sum()
        self.offsets = np.concatenate([[0], np.cumsum([len(d) for d in self.datasets])])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        sample = self.datasets[k][int(index - self.offsets[k])]
        sample["dataset_index"] = k
        return sample
