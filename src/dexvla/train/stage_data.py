"""A stage's training set: datasets opened and checked, statistics merged, chunk windows built.

The windows resize images to the policy's `vlm.image_size` in the DataLoader workers, so a
batch carries uint8 (B, 3, h, w) images at the size the VLM sees.

Several datasets make a `MixtureDataset`; its batches come from `mixture_batches`, one
dataset (so one embodiment) per optimiser step, as the per-embodiment expert heads need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from dexvla.data.sampler import EmbodimentBatchSampler
from dexvla.data.sources import open_dataset
from dexvla.data.windows import ChunkWindows, MixtureDataset
from dexvla.embodiments import get_embodiment
from dexvla.policy.configuration import POSITION_CONDITIONS, PolicyConfig
from dexvla.stats import DatasetStats, Normalizer
from dexvla.train.config import TrainConfig
from dexvla.train.distributed import DistInfo, ShardedBatches
from dexvla.train.engine import BatchSamplerFactory, shuffled_batches
from dexvla.train.recipes import StageConfig


def mixture_batches(
    dataset: Dataset, config: TrainConfig, info: DistInfo, start_step: int
) -> ShardedBatches:
    """Each step's global batch from one dataset of a `MixtureDataset`, cut for this rank."""
    batches = EmbodimentBatchSampler(
        dataset,  # type: ignore[arg-type]
        batch_size=config.batch_size,
        num_batches=config.steps,
        seed=config.seed,
    )
    return ShardedBatches(
        batches, config.batch_size, config.grad_accum, info.rank, info.world_size, start_step
    )


@dataclass
class StageData:
    """The training set of a stage: windows (mixed when several), merged stats, embodiments."""

    dataset: ChunkWindows | MixtureDataset
    stats: DatasetStats
    embodiments: tuple[str, ...]
    paths: tuple[Path, ...]
    env_state_dim: int = 0  # the object-position width, when the policy uses it

    @property
    def batch_sampler(self) -> BatchSamplerFactory:
        """How the engine draws batches: one dataset per step for a mixture."""
        return mixture_batches if isinstance(self.dataset, MixtureDataset) else shuffled_batches


def check_substeps(paths: Sequence[Path], sources: Sequence[Any], stage: int) -> None:
    """Refuse datasets whose frames carry no sub-step text at all."""
    bare = [
        str(path)
        for path, source in zip(paths, sources, strict=True)
        if not any(
            any(s.strip() for s in source.lowdim(i)["substeps"]) for i in range(source.num_episodes)
        )
    ]
    if bare:
        raise ValueError(
            f"stage {stage} trains on sub-step reasoning but {', '.join(bare)} has no sub-step "
            "annotations; label it first with `dexvla annotate DIR`"
        )


def env_state_sources(
    paths: Sequence[Path], sources: Sequence[Any], config: StageConfig, policy: PolicyConfig
) -> tuple[list[bool], int]:
    """Which datasets' samples carry the recorded object positions, and their width (0: none).

    Stages 2-3 with `env_state` need them in every dataset. Stage 1 has no VLM, so only an
    expert whose condition takes positions ("oracle", "predicted") uses them, from the
    datasets that record them (simulated ALOHA); the other embodiments' batches go without,
    and at least one dataset must record them. Every dataset used must record one width.
    """
    use = policy.env_state
    if config.recipe.builds == "expert":
        used = [use in POSITION_CONDITIONS and s.env_state_dim is not None for s in sources]
        missing = use in POSITION_CONDITIONS and not any(used)
    else:
        used = [use != "none"] * len(sources)
        missing = use != "none" and any(s.env_state_dim is None for s in sources)
    widths = {str(p): s.env_state_dim for p, s, u in zip(paths, sources, used, strict=True) if u}
    if missing or len(set(widths.values())) > 1:
        every = "one dataset" if config.recipe.builds == "expert" else "every dataset"
        recorded = {str(p): s.env_state_dim for p, s in zip(paths, sources, strict=True)}
        raise ValueError(
            f"env_state={use!r} needs {every} to record observation.environment_state, "
            f"with one width; got {recorded}"
        )
    return used, next(iter(widths.values()), 0)


def load_stage_data(
    paths: Sequence[str | Path],
    config: StageConfig,
    policy: PolicyConfig,
    base_stats: DatasetStats | None = None,
) -> StageData:
    """Open the datasets, check their embodiments against the policy's heads, build windows.

    Stats are computed over the data, merged per embodiment across datasets; `base_stats`
    (an init checkpoint's) supplies embodiments the data does not cover.
    """
    paths = tuple(Path(p) for p in paths)
    if not paths:
        raise ValueError("no dataset given (--data DIR[,DIR...])")
    if config.data_weights is not None and len(config.data_weights) != len(paths):
        raise ValueError(f"{len(config.data_weights)} data weights for {len(paths)} datasets")
    sources = [open_dataset(path) for path in paths]
    for path, source in zip(paths, sources, strict=True):
        if source.embodiment not in policy.expert.embodiments:
            raise ValueError(
                f"dataset {path} is {source.embodiment!r} data but policy {policy.name!r} has "
                f"expert heads for {list(policy.expert.embodiments)} only (set --embodiments)"
            )
        if source.num_frames == 0:
            raise ValueError(f"dataset {path} has no frames")
    if config.recipe.needs_substeps:
        check_substeps(paths, sources, config.stage)
    stats = DatasetStats()
    for path, source in zip(paths, sources, strict=True):
        try:
            stats = stats.merge(DatasetStats.from_source(source))
        except ValueError as error:
            raise ValueError(f"dataset {path}: {error}") from None
    if base_stats is not None:
        stats = stats.with_fallback(base_stats)
    normalizer = Normalizer(stats)
    positions, width = env_state_sources(paths, sources, config, policy)
    windows = [
        ChunkWindows(
            source,
            chunk_size=policy.chunk_size,
            normalizer=normalizer,
            pad=config.pad,
            cameras=get_embodiment(source.embodiment).cameras,
            image_size=policy.vlm.image_size,
            env_state=with_positions,
        )
        for source, with_positions in zip(sources, positions, strict=True)
    ]
    embodiments = tuple(dict.fromkeys(source.embodiment for source in sources))
    if len(windows) == 1:
        dataset: ChunkWindows | MixtureDataset = windows[0]
    else:
        weights = config.data_weights or tuple(float(len(w)) for w in windows)
        dataset = MixtureDataset(windows, weights)
    return StageData(dataset, stats, embodiments, paths, width)
