"""A toy policy and dataset for the training-engine tests (also imported by subprocess scripts).

The policy follows the project's API, `forward(batch) -> (loss, metrics)`. It has a frozen
layer (the trainer must leave it alone); a trainable head it never uses (like the output heads
of embodiments absent from a batch: no gradient, so no optimiser state; optional); metrics as
0-d tensors, as `DexVLAPolicy` returns them; optional target noise
drawn from torch's global RNG (so exact resumption needs the RNG state); and it records the
sample ids it was fed (so tests can compare data order).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


class ToyDataset(Dataset):
    """`size` fixed samples of a smooth 4 -> 2 regression problem."""

    def __init__(self, size: int = 48, seed: int = 123) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, 4, generator=g)
        w = torch.randn(4, 2, generator=g)
        self.y = torch.tanh(self.x @ w) + 0.1 * torch.sin(3 * self.x[:, :2])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i], "id": torch.tensor(i)}


class ToyPolicy(nn.Module):
    """MLP regressor behind a frozen linear layer."""

    def __init__(self, noise: float = 0.0, hidden: int = 16, unused_head: bool = True) -> None:
        super().__init__()
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.net = nn.Sequential(
            nn.Linear(4, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, 2)
        )
        self.unused_head = nn.Linear(hidden, 2) if unused_head else None
        self.noise = noise
        self.seen_ids: list[int] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        self.seen_ids.extend(batch["id"].tolist())
        pred = self.net(self.frozen(batch["x"]))
        target = batch["y"]
        if self.noise:
            target = target + self.noise * torch.randn_like(target)
        loss = nn.functional.mse_loss(pred, target)
        return loss, {"mae": (pred.detach() - batch["y"]).abs().mean()}  # a 0-d tensor


def make_policy(noise: float = 0.0, seed: int = 0, unused_head: bool = True) -> ToyPolicy:
    """A policy with weights fixed by `seed` (`unused_head=False`: every parameter trains)."""
    torch.manual_seed(seed)
    return ToyPolicy(noise, unused_head=unused_head)
