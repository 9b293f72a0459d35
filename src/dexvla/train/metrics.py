"""Training metrics: a JSONL file, TensorBoard scalars and a loss-curve PNG.

`MetricWindow` sums each step's metrics as they come (0-d tensors stay on the device) and
reads them once per log: one device sync per `log_every` steps, not one per metric per step.

Only rank 0 creates a `MetricsLogger` with `enabled=True`; the others get a silent one, so the
loop can log unconditionally. `metrics.jsonl` is an append-only log (each record flushed and
fsynced as it is written); rewriting it on resume and drawing the PNG go through `dexvla.io`'s
atomic writes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dexvla.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"


class MetricWindow:
    """Running sums of per-step metrics (0-d tensors or floats) between two logs."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0

    def add(self, metrics: Mapping[str, torch.Tensor | float]) -> None:
        """Add one step's metrics, without reading a tensor (no device sync)."""
        for key, value in metrics.items():
            value = value.detach().float() if torch.is_tensor(value) else float(value)
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.steps += 1

    def means(self) -> dict[str, float]:
        """Each metric's mean over the steps that reported it: all tensors read at once."""
        tensors = {k: v for k, v in self.sums.items() if torch.is_tensor(v)}
        read: dict[str, float] = {}
        if tensors:
            device = next(iter(tensors.values())).device
            values = torch.stack([v.to(device) for v in tensors.values()]).tolist()
            read = dict(zip(tensors, values, strict=True))
        total = {k: read[k] if k in read else float(v) for k, v in self.sums.items()}
        return {k: v / self.counts[k] for k, v in total.items()}


class MetricsLogger:
    """Appends one JSON object per logged step to `<out_dir>/metrics.jsonl` (and TensorBoard)."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.path = self.out_dir / METRICS_FILE
        self._writer: Any = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR))

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run rewrites what the interrupted one logged
        after its last checkpoint."""
        if not (self.enabled and self.path.exists()):
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` at `step`."""
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:  # append-only log: one durable record per call
            f.write(json.dumps({"step": step, **metrics}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._writer is not None:
            for key, value in metrics.items():
                self._writer.add_scalar(f"train/{key}", value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The records of a metrics JSONL file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    """Plot loss (and lr) against step from a metrics JSONL file; None when there is nothing."""
    records = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not records:
        log.warning("no loss records in %s: no loss curve drawn", metrics_path)
        return None
    from matplotlib.figure import Figure  # no pyplot: no global backend state to disturb

    steps = [r["step"] for r in records]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(steps, [r["loss"] for r in records], label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(r["loss"] > 0 for r in records):
        ax.set_yscale("log")
    if all("lr" in r for r in records):
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [r["lr"] for r in records], color="tab:orange", alpha=0.6, label="lr")
        lr_ax.set_ylabel("learning rate")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    atomic_write(png_path, lambda temp: fig.savefig(temp, format="png", dpi=100))
    return png_path
