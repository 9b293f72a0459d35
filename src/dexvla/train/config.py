"""`TrainConfig`: the generic engine's settings, validated on construction, JSON round-trip.

The engine knows nothing about the model; what a stage trains (which parameters are frozen,
which data it reads) is the stage code's business. This config only says *how* to optimise.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Schedule = Literal["constant", "cosine"]
Precision = Literal["no", "bf16"]
Strategy = Literal["ddp", "fsdp"]

# Fields that may differ between a checkpoint and the run resuming it: they change neither the
# optimisation trajectory nor the data order. `steps` joins them for the constant schedule only
# (the cosine schedule's shape depends on the total).
RESUMABLE_FIELDS = frozenset(
    {"save_every", "keep_last", "log_every", "num_workers", "device", "strategy", "tensorboard"}
)


class ConfigMismatchError(ValueError):
    """A run was asked to resume from a checkpoint written with different settings."""


@dataclass(frozen=True)
class TrainConfig:
    """How to optimise a `forward(batch) -> (loss, metrics)` module.

    `batch_size` is the *global* batch of one optimiser step: it is split into `grad_accum`
    micro-steps and each micro-step across the processes, so a run's samples and gradients are
    the same on 1 or N processes (`batch_size` must divide by `grad_accum * world_size`).
    `betas` default to (0.9, 0.98), the released DexVLA scripts' AdamW setting. `ema` is the
    decay of an exponential moving average of the trainable weights (None: no EMA).
    `precision="bf16"` autocasts to bfloat16 on CUDA only; on CPU the run falls back to fp32
    with a warning (bf16 matmuls have no hardware support there). `strategy` picks DDP or FSDP
    when launched with more than one process. `keep_last=0` keeps every checkpoint.
    """

    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Schedule = "constant"
    grad_clip: float | None = 1.0
    ema: float | None = None
    grad_accum: int = 1
    seed: int = 0
    save_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    num_workers: int = 0
    precision: Precision = "no"
    gradient_checkpointing: bool = False
    device: str = "auto"
    strategy: Strategy = "ddp"
    tensorboard: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        errors: list[str] = []
        for name in ("steps", "batch_size", "grad_accum", "save_every", "log_every"):
            if int(getattr(self, name)) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "keep_last", "num_workers", "seed"):
            if int(getattr(self, name)) < 0:
                errors.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            errors.append(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            errors.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            errors.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.schedule not in ("constant", "cosine"):
            errors.append(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.precision not in ("no", "bf16"):
            errors.append(f"precision must be 'no' or 'bf16', got {self.precision!r}")
        if self.strategy not in ("ddp", "fsdp"):
            errors.append(f"strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            errors.append(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            errors.append(f"ema must be a decay in (0, 1) or None, got {self.ema}")
        if self.batch_size % self.grad_accum:
            errors.append(
                f"batch_size {self.batch_size} must divide by grad_accum {self.grad_accum}"
            )
        if errors:
            raise ValueError("invalid TrainConfig: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (betas as a list)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from `to_dict` output; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> TrainConfig:
        """Parse a JSON string, or read a JSON file when `source` is a path to one."""
        if isinstance(source, Path) or not source.lstrip().startswith("{"):
            source = Path(source).read_text()
        return cls.from_dict(json.loads(source))

    def resume_mismatches(self, saved: TrainConfig) -> list[str]:
        """The fields that forbid resuming a run saved with `saved` under this config."""
        allowed = set(RESUMABLE_FIELDS)
        if self.schedule == saved.schedule == "constant":
            allowed.add("steps")
        mine, theirs = self.to_dict(), saved.to_dict()
        return [
            f"{k}: checkpoint {theirs[k]!r} != now {mine[k]!r}"
            for k in sorted(mine)
            if k not in allowed and mine[k] != theirs[k]
        ]
