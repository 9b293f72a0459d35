"""Dataset statistics and the normaliser that uses them.

Actions are min-max scaled to [-1, 1]; state is z-scored. Statistics are computed once per
embodiment, saved as JSON (atomically) and carried by the policy checkpoint, so the same numbers
normalise training batches and un-normalise the actions the policy outputs.

Guard for constant dimensions (a joint that never moves in the data): when `max - min` or `std`
is below `EPS`, the scale is 1 instead, so the dimension maps to `x - centre` (0 on the data)
rather than dividing by ~0; the inverse stays exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from dexvla.embodiments import get_embodiment
from dexvla.io import atomic_write_json, one_line, read_json

if TYPE_CHECKING:
    from dexvla.schema import Episode

EPS = 1e-6
STATE = "observation.state"
ACTION = "action"
KEYS = (STATE, ACTION)
NORMALIZER_STATS = {ACTION: ("min", "max"), STATE: ("mean", "std")}  # what `Normalizer` reads
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
STATS_VERSION = 1
FOVY_KEY = "camera_fovy"
FOVY_TOLERANCE = 0.01  # degrees

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def feature_stats(values: np.ndarray, *, quantiles: bool = True) -> dict[str, np.ndarray]:
    """LeRobot-style statistics over axis 0: min, max, mean, std, count (and q01..q99)."""
    values = np.asarray(values, dtype=np.float64)
    stats = {
        "min": values.min(axis=0),
        "max": values.max(axis=0),
        "mean": values.mean(axis=0),
        "std": values.std(axis=0),
        "count": np.array([values.shape[0]], dtype=np.int64),
    }
    if quantiles:
        for q in QUANTILES:
            stats[f"q{round(q * 100):02d}"] = np.quantile(values, q, axis=0)
    return stats


def aggregate_stats(parts: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine per-part statistics: exact min/max/mean/std (pooled), count-weighted quantiles."""
    if not parts:
        raise ValueError("aggregate_stats: no statistics to aggregate")
    counts = np.array([float(np.asarray(p["count"]).reshape(-1)[0]) for p in parts])
    weights = counts / counts.sum()
    means = np.stack([np.asarray(p["mean"], dtype=np.float64) for p in parts])
    stds = np.stack([np.asarray(p["std"], dtype=np.float64) for p in parts])
    shape = (-1,) + (1,) * (means.ndim - 1)
    w = weights.reshape(shape)
    mean = (w * means).sum(axis=0)
    var = (w * (stds**2 + (means - mean) ** 2)).sum(axis=0)
    out = {
        "min": np.min(np.stack([np.asarray(p["min"]) for p in parts]), axis=0),
        "max": np.max(np.stack([np.asarray(p["max"]) for p in parts]), axis=0),
        "mean": mean,
        "std": np.sqrt(np.maximum(var, 0.0)),
        "count": np.array([int(counts.sum())], dtype=np.int64),
    }
    for name in parts[0]:
        if name.startswith("q") and all(name in p for p in parts):
            qs = np.stack([np.asarray(p[name], dtype=np.float64) for p in parts])
            out[name] = (w * qs).sum(axis=0)
    return out


def fovy_differs(first: float, second: float) -> bool:
    """Whether two fields of view (degrees) differ by more than rounding."""
    return abs(first - second) > FOVY_TOLERANCE


def _merge_fovy(
    first: Mapping[str, Mapping[str, float]], second: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """Union of two `{embodiment: {camera: fovy}}`; an error where they disagree."""
    merged = {name: dict(cams) for name, cams in first.items()}
    for name, cams in second.items():
        mine = merged.setdefault(name, {})
        for cam, fovy in cams.items():
            if cam in mine and fovy_differs(mine[cam], fovy):
                raise ValueError(
                    f"{name} camera {cam!r}: datasets disagree on its field of view "
                    f"({mine[cam]:g} vs {fovy:g} degrees); data from different simulator "
                    "versions cannot be mixed: re-collect the older one"
                )
            mine[cam] = float(fovy)
    return merged


def _to_json(stats: Mapping[str, np.ndarray]) -> dict[str, list]:
    return {name: np.asarray(value).tolist() for name, value in stats.items()}


@dataclass
class DatasetStats:
    """Per-embodiment statistics of `observation.state` and `action`.

    `stats[embodiment][key]` holds float64 arrays `min`, `max`, `mean`, `std`, `count` (and
    quantiles). Build with `from_episodes` / `from_arrays`, combine with `merge`.
    `camera_fovy[embodiment][cam]` is the cameras' vertical field of view (degrees) where the
    data recorded it: it travels with the statistics into checkpoints, so evaluation can refuse
    a simulator whose cameras differ from those the policy was trained on.
    """

    stats: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    camera_fovy: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, embodiment: str, state: np.ndarray, action: np.ndarray) -> DatasetStats:
        """Statistics of one embodiment's stacked frames: state (N, S), action (N, A)."""
        spec = get_embodiment(embodiment)
        if state.ndim != 2 or state.shape[1] != spec.state_dim:
            raise ValueError(f"stats {embodiment}: state must be (N, {spec.state_dim})")
        if action.ndim != 2 or action.shape[1] != spec.action_dim:
            raise ValueError(f"stats {embodiment}: action must be (N, {spec.action_dim})")
        if len(state) == 0:
            raise ValueError(f"stats {embodiment}: no frames")
        return cls({embodiment: {STATE: feature_stats(state), ACTION: feature_stats(action)}})

    @classmethod
    def from_episodes(cls, episodes: Iterable[Episode]) -> DatasetStats:
        """Statistics over every frame of the episodes, grouped by embodiment."""
        state: dict[str, list[np.ndarray]] = {}
        action: dict[str, list[np.ndarray]] = {}
        fovy: dict[str, dict[str, float]] = {}
        for episode in episodes:
            state.setdefault(episode.embodiment, []).append(episode.state)
            action.setdefault(episode.embodiment, []).append(episode.action)
            if episode.camera_fovy:
                fovy = _merge_fovy(fovy, {episode.embodiment: episode.camera_fovy})
        result = cls(camera_fovy=fovy)
        for name in state:
            result = result.merge(
                cls.from_arrays(name, np.concatenate(state[name]), np.concatenate(action[name]))
            )
        return result

    @classmethod
    def from_source(cls, source: Any) -> DatasetStats:
        """Statistics of a dataset reader (`LeRobotV3Dataset`, `ActHdf5Dataset`): no images read."""
        lows = [source.lowdim(i) for i in range(source.num_episodes)]
        stats = cls.from_arrays(
            source.embodiment,
            np.concatenate([low["state"] for low in lows]),
            np.concatenate([low["action"] for low in lows]),
        )
        if source.camera_fovy:
            stats.camera_fovy = {source.embodiment: dict(source.camera_fovy)}
        return stats

    @property
    def embodiments(self) -> list[str]:
        return sorted(self.stats)

    def merge(self, other: DatasetStats) -> DatasetStats:
        """Statistics of the union of both datasets (pooled per embodiment)."""
        merged = {name: dict(keys) for name, keys in self.stats.items()}
        for name, keys in other.stats.items():
            if name not in merged:
                merged[name] = dict(keys)
                continue
            for key in KEYS:
                merged[name][key] = aggregate_stats([merged[name][key], keys[key]])
        return DatasetStats(merged, _merge_fovy(self.camera_fovy, other.camera_fovy))

    def with_fallback(self, base: DatasetStats) -> DatasetStats:
        """These statistics plus `base`'s for the embodiments these do not cover."""
        kept = [name for name in base.stats if name not in self.stats]
        return DatasetStats(
            {**{name: base.stats[name] for name in kept}, **self.stats},
            {
                **{n: base.camera_fovy[n] for n in kept if n in base.camera_fovy},
                **self.camera_fovy,
            },
        )

    def to_json(self) -> dict:
        return {
            "version": STATS_VERSION,
            "embodiments": {
                name: {
                    **{key: _to_json(value) for key, value in keys.items()},
                    **({FOVY_KEY: self.camera_fovy[name]} if name in self.camera_fovy else {}),
                }
                for name, keys in self.stats.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping) -> DatasetStats:
        if data.get("version") != STATS_VERSION or "embodiments" not in data:
            raise ValueError(f"dataset stats: unsupported format (version {data.get('version')!r})")
        stats, fovy = {}, {}
        for name, keys in data["embodiments"].items():
            if FOVY_KEY in keys:
                fovy[name] = {cam: float(v) for cam, v in keys[FOVY_KEY].items()}
            get_embodiment(name)
            missing = [key for key in KEYS if key not in keys]
            missing += [
                f"{key}.{stat}"
                for key, stats_needed in NORMALIZER_STATS.items()
                if key in keys
                for stat in stats_needed
                if stat not in keys[key]
            ]
            if missing:
                raise ValueError(f"dataset stats {name}: missing {missing}")
            stats[name] = {
                key: {stat: np.asarray(v, dtype=np.float64) for stat, v in keys[key].items()}
                for key in KEYS
            }
        return cls(stats, fovy)

    def save(self, path: Path) -> None:
        """Write JSON atomically."""
        atomic_write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> DatasetStats:
        """Read a `save`d file; every error names it."""
        path = Path(path)
        data = read_json(path, "dataset stats")
        try:
            return cls.from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: {one_line(error)}") from None

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat `{"<embodiment>/<key>/<stat>": float32 tensor}`, e.g. for safetensors."""
        return {
            f"{name}/{key}/{stat}": torch.as_tensor(np.asarray(value), dtype=torch.float32)
            for name, keys in self.stats.items()
            for key, values in keys.items()
            for stat, value in values.items()
        }

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> DatasetStats:
        stats: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        for flat, tensor in tensors.items():
            parts = flat.split("/")
            if len(parts) != 3 or parts[1] not in KEYS:
                raise ValueError(f"stats tensor {flat!r}: expected <embodiment>/<key>/<stat>")
            name, key, stat = parts
            value = tensor.detach().cpu().double().numpy()
            stats.setdefault(name, {}).setdefault(key, {})[stat] = value
        return cls(stats)


class Normalizer:
    """Forward and inverse normalisation of state and action, per embodiment.

    `normalize("action", x, "aloha")` maps to [-1, 1] on the data's range; `normalize(
    "observation.state", x, ...)` z-scores. Works on numpy arrays and torch tensors of shape
    (..., D) and returns the same type (float32 for numpy, the input dtype/device for torch).
    """

    def __init__(self, stats: DatasetStats) -> None:
        self.stats = stats
        self._params: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        for name, keys in stats.stats.items():
            action = keys[ACTION]
            low, high = np.asarray(action["min"]), np.asarray(action["max"])
            half = (high - low) / 2.0
            self._params[(name, ACTION)] = ((high + low) / 2.0, np.where(half < EPS, 1.0, half))
            std = np.asarray(keys[STATE]["std"])
            self._params[(name, STATE)] = (
                np.asarray(keys[STATE]["mean"]),
                np.where(std < EPS, 1.0, std),
            )

    def _center_scale(self, key: str, embodiment: str, x: Array) -> tuple[Array, Array]:
        if key not in KEYS:
            raise KeyError(f"normalizer: unknown key {key!r}; expected one of {KEYS}")
        try:
            center, scale = self._params[(embodiment, key)]
        except KeyError:
            raise KeyError(
                f"normalizer: no statistics for embodiment {embodiment!r}; "
                f"have {self.stats.embodiments}"
            ) from None
        if x.shape[-1] != center.shape[-1]:
            raise ValueError(
                f"normalizer {embodiment} {key}: last dim {x.shape[-1]}, "
                f"expected {center.shape[-1]}"
            )
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            return (
                torch.as_tensor(center, dtype=dtype, device=x.device),
                torch.as_tensor(scale, dtype=dtype, device=x.device),
            )
        return center.astype(np.float32), scale.astype(np.float32)

    def normalize(self, key: str, x: Array, embodiment: str) -> Array:
        center, scale = self._center_scale(key, embodiment, x)
        if isinstance(x, torch.Tensor):
            return (x.to(center.dtype) - center) / scale
        return ((np.asarray(x, dtype=np.float32) - center) / scale).astype(np.float32)

    def unnormalize(self, key: str, x: Array, embodiment: str) -> Array:
        center, scale = self._center_scale(key, embodiment, x)
        if isinstance(x, torch.Tensor):
            return x.to(center.dtype) * scale + center
        return (np.asarray(x, dtype=np.float32) * scale + center).astype(np.float32)
