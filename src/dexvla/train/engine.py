"""The generic training loop for any `nn.Module` with `forward(batch) -> (loss, metrics)`.

The trainer optimises the parameters with `requires_grad` and nothing else: which parts of a
model are frozen is decided by whoever builds the model (the stage code), not here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from dexvla.io import remove_stale_temps
from dexvla.train.checkpoint import (
    check_resume_config,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from dexvla.train.config import TrainConfig
from dexvla.train.distributed import (
    DistInfo,
    ResumableBatchSampler,
    barrier,
    gradient_sync,
    init_distributed,
    mean_metrics,
    wrap_model,
)
from dexvla.train.metrics import LOSS_CURVE_FILE, MetricsLogger, plot_loss_curve
from dexvla.train.optim import EMA, build_optimizer, build_scheduler

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"

# Builds this process's sampler of micro-batches (lists of dataset indices) from the dataset,
# the config, the process's rank info and the optimiser step to start at.
BatchSamplerFactory = Callable[[Dataset, TrainConfig, DistInfo, int], Sampler[list[int]]]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors in (nested) dicts, lists and tuples to `device`; everything else untouched."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def shuffled_batches(
    dataset: Dataset, config: TrainConfig, info: DistInfo, start_step: int
) -> ResumableBatchSampler:
    """The default batches: seeded permutations of the whole dataset, resumable at any step."""
    return ResumableBatchSampler(
        len(dataset),  # type: ignore[arg-type]
        config.batch_size,
        config.grad_accum,
        info.rank,
        info.world_size,
        config.seed,
        start_step=start_step,
    )


@dataclass
class TrainResult:
    """What `Trainer.train` reports: where it stopped and the last logged metrics."""

    step: int
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Trains `model` on `dataset` following `config`, writing everything under `out_dir`.

    `model(batch)` must return `(loss, metrics)` with a scalar loss averaged over the batch's
    samples (so that gradient accumulation and data parallelism average correctly) and a dict
    of float metrics. Outputs: `checkpoints/step-XXXXXX/`, `metrics.jsonl`, `tensorboard/`,
    `loss_curve.png`, `config.json`.

    `resume`: False starts fresh (and refuses an `out_dir` that already holds checkpoints);
    True continues from the newest complete checkpoint in `out_dir` (fresh when none); a path
    continues from that checkpoint. `on_save(dir)` may add files to every checkpoint before
    it is sealed. `batch_sampler` chooses each step's samples (default `shuffled_batches`); it
    must cut every global batch the same way for any number of processes. Launched by
    `torchrun` with several processes, the trainer joins the process group itself and wraps
    the model for DDP or FSDP (`config.strategy`).
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        resume: bool | str | Path = False,
        on_save: Callable[[Path], None] | None = None,
        batch_sampler: BatchSamplerFactory = shuffled_batches,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.checkpoint_root = self.out_dir / CHECKPOINTS_DIR
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.resume = resume
        self.on_save = on_save
        self.batch_sampler = batch_sampler
        self.info, self.device, self._owns_group = init_distributed(config.device)
        if config.batch_size % (config.grad_accum * self.info.world_size):
            raise ValueError(
                f"batch_size {config.batch_size} must divide by grad_accum {config.grad_accum} "
                f"x world size {self.info.world_size}"
            )
        self.autocast_dtype = self._autocast_dtype()
        if config.gradient_checkpointing:
            enable = getattr(model, "gradient_checkpointing_enable", None)
            if enable is None:
                log.warning(
                    "%s has no gradient_checkpointing_enable(); ignoring the flag",
                    type(model).__name__,
                )
            else:
                enable()
        self.model = model.to(self.device)
        self.wrapped = wrap_model(self.model, config.strategy, self.device, self.info)
        self.optimizer = build_optimizer(self.wrapped, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.ema = EMA(self.model, config.ema) if config.ema is not None else None
        self.step = 0

    def _autocast_dtype(self) -> torch.dtype | None:
        if self.config.precision != "bf16":
            return None
        if self.device.type != "cuda":
            log.warning("bf16 autocast needs CUDA; training on %s in fp32", self.device)
            return None
        return torch.bfloat16

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _resume_path(self) -> Path | None:
        if self.resume is False:
            if latest_checkpoint(self.checkpoint_root) is not None:
                raise FileExistsError(
                    f"{self.checkpoint_root} already holds checkpoints: resume, or pick a new "
                    "output directory"
                )
            return None
        if self.resume is True:
            return latest_checkpoint(self.checkpoint_root)
        return Path(self.resume)

    def _restore(self, path: Path) -> None:
        check_resume_config(path, self.config)
        state, ema_state = load_checkpoint(
            path,
            model=self.wrapped,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            info=self.info,
            device=self.device,
        )
        if self.ema is not None:
            if ema_state is None:
                raise ValueError(f"{path} has no EMA weights but the config asks for EMA")
            self.ema.load_state_dict(ema_state)
        self.step = int(state["step"])
        if state["world_size"] != self.info.world_size:
            seed_everything(self.config.seed + self.info.rank + 7919 * self.step)
        log.info("resumed from %s at step %d", path, self.step)

    def _loader(self) -> Iterator[Any]:
        sampler = self.batch_sampler(self.dataset, self.config, self.info, self.step)
        worker_seed = np.random.SeedSequence([self.config.seed, self.info.rank, self.step])
        generator = torch.Generator().manual_seed(int(worker_seed.generate_state(1)[0]))
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=self.config.num_workers,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )
        return iter(loader)

    def save(self) -> Path:
        """Checkpoint the current step (every rank must call this)."""
        return save_checkpoint(
            self.checkpoint_root,
            self.step,
            model=self.wrapped,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            config=self.config,
            trainer_state={"samples_seen": self.step * self.config.batch_size},
            info=self.info,
            device=self.device,
            ema_state=self.ema.state_dict() if self.ema is not None else None,
            keep_last=self.config.keep_last,
            on_save=self.on_save,
        )

    def _train_step(self, batches: Iterator[Any]) -> tuple[torch.Tensor, dict[str, float], float]:
        """One optimiser step over `grad_accum` micro-batches: (loss, metrics, grad norm)."""
        accum = self.config.grad_accum
        loss_sum = torch.zeros((), device=self.device)
        metric_sums: dict[str, float] = {}
        for micro in range(accum):
            batch = move_to_device(next(batches), self.device)
            with gradient_sync(self.wrapped, micro == accum - 1), self._autocast():
                loss, metrics = self.wrapped(batch)
                (loss / accum).backward()
            loss_sum += loss.detach().float()
            for key, value in metrics.items():
                metric_sums[key] = metric_sums.get(key, 0.0) + float(value) / accum
        loss = loss_sum / accum
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.step + 1}")
        params = [p for p in self.wrapped.parameters() if p.requires_grad]
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, self.step + 1)
        return loss, metric_sums, float(norm)

    def train(self) -> TrainResult:
        """Run (or continue) training to `config.steps`; returns where it stopped."""
        config, info = self.config, self.info
        seed_everything(config.seed + info.rank)
        resume_from = self._resume_path()
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.checkpoint_root, recursive=False)
            config.to_json(self.out_dir / "config.json")
        barrier()
        if resume_from is not None:
            self._restore(resume_from)
        logger = MetricsLogger(self.out_dir, enabled=info.is_main, tensorboard=config.tensorboard)
        logger.truncate_after(self.step)
        last_ckpt = resume_from
        last_metrics: dict[str, float] = {}
        self.wrapped.train()
        batches = self._loader()
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            disable=None if info.is_main else True,
            dynamic_ncols=True,
        )
        window: list[tuple[float, dict[str, float], float]] = []
        tick = time.perf_counter()
        try:
            while self.step < config.steps:
                loss, metrics, grad_norm = self._train_step(batches)
                self.step += 1
                window.append((float(loss), metrics, grad_norm))
                bar.update(1)
                if self.step % config.log_every == 0 or self.step == config.steps:
                    elapsed = time.perf_counter() - tick
                    last_metrics = self._window_metrics(window, elapsed)
                    logger.log(self.step, last_metrics)
                    bar.set_postfix(
                        loss=f"{last_metrics['loss']:.4g}",
                        lr=f"{last_metrics['lr']:.2e}",
                        samples_s=f"{last_metrics['samples_per_s']:.1f}",
                    )
                    window, tick = [], time.perf_counter()
                if self.step % config.save_every == 0 or self.step == config.steps:
                    last_ckpt = self.save()
        finally:
            bar.close()
            logger.close()
        if info.is_main and logger.path.exists():
            plot_loss_curve(logger.path, self.out_dir / LOSS_CURVE_FILE)
        barrier()
        self.close()
        return TrainResult(self.step, last_ckpt, last_metrics)

    def _window_metrics(
        self, window: list[tuple[float, dict[str, float], float]], elapsed: float
    ) -> dict[str, float]:
        """Average the window's steps, then the processes (rank 0 logs the result)."""
        keys = sorted({k for _, m, _ in window for k in m})
        local = {k: float(np.mean([m[k] for _, m, _ in window if k in m])) for k in keys}
        local["loss"] = float(np.mean([loss for loss, _, _ in window]))
        local["grad_norm"] = float(np.mean([g for _, _, g in window]))
        out = mean_metrics(local)
        out["lr"] = self.scheduler.get_last_lr()[0]
        out["samples_per_s"] = len(window) * self.config.batch_size / max(elapsed, 1e-9)
        return out

    def close(self) -> None:
        """Leave the process group if this trainer created it (`train` does so at the end)."""
        if self._owns_group:
            torch.distributed.destroy_process_group()
            self._owns_group = False
