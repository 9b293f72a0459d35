"""`TrainConfig`: the generic engine's settings, validated on construction, JSON round-trip.

The engine knows nothing about the model; what a stage trains (which parameters are frozen,
which data it reads) is the stage code's business. This config only says *how* to optimise.

A field whose metadata is `flag(...)` is also a `dexvla train` flag: the field says its flag
name and `argparse` options once, and the command builds its parser from the fields
(`option_flags`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from dexvla.io import atomic_write_text
from dexvla.schema import check_known_fields

Schedule = Literal["constant", "cosine"]
Precision = Literal["no", "bf16"]
Strategy = Literal["ddp", "fsdp"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
PRECISIONS: tuple[str, ...] = get_args(Precision)
STRATEGIES: tuple[str, ...] = get_args(Strategy)

# Fields that may differ between a checkpoint and the run resuming it: they change neither the
# optimisation trajectory nor the data order. `steps` joins them for the constant schedule only
# (the cosine schedule's shape depends on the total).
RESUMABLE_FIELDS = frozenset(
    {
        "save_every",
        "keep_last",
        "log_every",
        "num_workers",
        "device",
        "strategy",
        "tensorboard",
        "compile",
    }
)
FLAG = "flag"  # the field-metadata key of an option's command-line flag


@dataclass(frozen=True)
class Flag:
    """A config field's command-line flag: its name (None: `--field-name`) and the keyword
    arguments of `argparse.ArgumentParser.add_argument` (type, choices, action, help)."""

    name: str | None
    kwargs: Mapping[str, Any]

    def flag_name(self, field_name: str) -> str:
        return self.name or "--" + field_name.replace("_", "-")


def flag(name: str | None = None, **kwargs: Any) -> dict[str, Flag]:
    """Field metadata making a config field the `dexvla train` flag `name`:
    `field(default=..., metadata=flag(type=int))`."""
    return {FLAG: Flag(name, kwargs)}


def switch(help: str | None = None) -> dict[str, Flag]:
    """Field metadata for a boolean set by `--name` / `--no-name`."""
    return flag(action=argparse.BooleanOptionalAction, help=help)


def option_flags(config_cls: type) -> Iterator[tuple[str, Flag]]:
    """(field name, flag) of every option of a config dataclass, in field order; a field that
    holds a nested config (its default factory is a dataclass) contributes that one's options."""
    for f in dataclasses.fields(config_cls):
        if FLAG in f.metadata:
            yield f.name, f.metadata[FLAG]
        elif isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            yield from option_flags(f.default_factory)


def parse_floats(text: str) -> tuple[float, ...]:
    """`1,0.5` -> (1.0, 0.5): a flag's comma-separated numbers."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def parse_names(text: str) -> tuple[str, ...]:
    """`aloha, sawyer` -> ("aloha", "sawyer"): a flag's comma-separated names."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parse_size(text: str) -> tuple[int, int]:
    """`84x84` -> (84, 84): a flag's image size, height x width."""
    try:
        height, width = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 84x84), got {text!r}") from None
    return height, width


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

    steps: int = field(default=1000, metadata=flag(type=int))
    batch_size: int = field(default=8, metadata=flag(type=int))
    lr: float = field(default=1e-4, metadata=flag(type=float))
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_steps: int = field(default=0, metadata=flag(type=int))
    schedule: Schedule = field(default="constant", metadata=flag(choices=SCHEDULES))
    grad_clip: float | None = 1.0
    ema: float | None = field(
        default=None, metadata=flag(type=float, help="EMA decay (final/ then holds EMA weights)")
    )
    grad_accum: int = field(default=1, metadata=flag(type=int))
    seed: int = field(default=0, metadata=flag(type=int))
    save_every: int = field(default=1000, metadata=flag(type=int))
    keep_last: int = field(default=3, metadata=flag(type=int))
    log_every: int = field(default=10, metadata=flag(type=int))
    num_workers: int = field(default=0, metadata=flag(name="--workers", type=int))
    precision: Precision = field(default="no", metadata=flag(choices=PRECISIONS))
    gradient_checkpointing: bool = field(
        default=False, metadata=switch("recompute activations in the backward pass")
    )
    compile: bool = field(
        default=False,
        metadata=switch(
            "torch.compile every transformer block (vision, decoder layers, the expert's "
            "trunk), forward and backward; the first steps compile them (~30-50 s on a CPU)"
        ),
    )
    device: str = field(default="auto", metadata=flag(help="auto, cpu, cuda, cuda:1, ..."))
    strategy: Strategy = field(default="ddp", metadata=flag(choices=STRATEGIES))
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
        if self.schedule not in SCHEDULES:
            errors.append(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            errors.append(f"precision must be 'no' or 'bf16', got {self.precision!r}")
        if self.strategy not in STRATEGIES:
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
        check_known_fields(cls, data)
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            atomic_write_text(Path(path), text + "\n")
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
