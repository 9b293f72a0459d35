"""`EmbodimentBatchSampler`: batches of one embodiment each, drawn from a `MixtureDataset` by
weight (stage 1's mixing of datasets)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from dexvla.data.windows import MixtureDataset


class EmbodimentBatchSampler(Sampler[list[int]]):
    """Batches of indices into a `MixtureDataset`, each drawn from a single dataset.

    Each batch picks dataset k with probability `weights[k]`, then `batch_size` frames of it
    uniformly (with replacement), so every batch has one embodiment. Seeded and reproducible.
    """

    def __init__(
        self, mixture: MixtureDataset, *, batch_size: int, num_batches: int, seed: int = 0
    ) -> None:
        if batch_size <= 0 or num_batches <= 0:
            raise ValueError("batch_size and num_batches must be positive")
        self.mixture = mixture
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        weights = torch.as_tensor(self.mixture.weights)
        picks = torch.multinomial(weights, self.num_batches, replacement=True, generator=generator)
        for k in picks.tolist():
            size = len(self.mixture.datasets[k])
            frames = torch.randint(size, (self.batch_size,), generator=generator)
            yield (frames + int(self.mixture.offsets[k])).tolist()
