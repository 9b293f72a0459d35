"""The generic training loop for any `nn.Module` with `forward(batch) -> (loss, metrics)`.

The trainer optimises the parameters with `requires_grad` and nothing else: which parts of a
model are frozen is decided by whoever builds the model (the stage code), not here. Metrics
may be floats or 0-d tensors; tensors are summed on the device and read once per log.
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
    average_gradients,
    barrier,
    broadcast_module,
    gradient_sync,
    init_distributed,
    mean_metrics,
    mixed_precision,
    shard_model,
    wrap_ddp,
)
from dexvla.train.metrics import LOSS_CURVE_FILE, MetricsLogger, MetricWindow, plot_loss_curve
from dexvla.train.optim import EMA, build_optimizer, build_scheduler

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
PREFETCH_FACTOR = 4  # batches each loader worker prepares ahead (video decoding is uneven)

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
    of metrics (floats or detached 0-d tensors). Outputs: `checkpoints/step-XXXXXX/`,
    `metrics.jsonl`, `tensorboard/`, `loss_curve.png`, `config.json`.

    `resume`: False starts fresh (and refuses an `out_dir` that already holds checkpoints);
    True continues from the newest complete checkpoint in `out_dir` (fresh when none); a path
    continues from that checkpoint. `on_save(dir)` may add files to every checkpoint before
    it is sealed. `batch_sampler` chooses each step's samples (default `shuffled_batches`); it
    must cut every global batch the same way for any number of processes. Launched by
    `torchrun` with several processes, the trainer joins the process group itself and wraps
    the model for DDP or FSDP (`config.strategy`).

    DDP wraps after the first optimiser step, which runs unwrapped with its gradients averaged
    by hand: whether every process gave every trainable parameter a gradient decides
    `find_unused_parameters` (needed only by models that leave some unused, like the heads of
    the embodiments absent from a batch; it costs a graph traversal every step).
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
        if config.compile:
            compile_blocks = getattr(model, "compile_blocks", None)
            if compile_blocks is None:
                log.warning("%s has no compile_blocks(); ignoring --compile", type(model).__name__)
            else:
                compile_blocks()
        self.model = model.to(self.device)
        self.ddp_pending = self.info.enabled and config.strategy == "ddp"
        self.wrapped = self._wrap()
        # The trainable parameters, listed once: DDP's later wrap keeps these very tensors.
        self.params = [p for p in self.wrapped.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.wrapped, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.ema = EMA(self.model, config.ema) if config.ema is not None else None
        self.step = 0

    def _wrap(self) -> nn.Module:
        """FSDP2 shards now; DDP waits for the first step (`ddp_pending`)."""
        if not self.info.enabled:
            return self.model
        if self.config.strategy == "fsdp":
            precision = mixed_precision(self.config.precision, self.device)
            return shard_model(self.model, precision)
        broadcast_module(self.model)  # as DDP would: every rank starts from rank 0's weights
        return self.model

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
        state = load_checkpoint(
            path,
            model=self.wrapped,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            info=self.info,
            device=self.device,
            ema=self.ema,
        )
        self.step = int(state["step"])
        if state["world_size"] != self.info.world_size:
            seed_everything(self.config.seed + self.info.rank + 7919 * self.step)
        log.info("resumed from %s at step %d", path, self.step)

    def loader(self) -> DataLoader:
        """The data loader from the current step: workers persist and prefetch, memory is
        pinned on CUDA."""
        sampler = self.batch_sampler(self.dataset, self.config, self.info, self.step)
        worker_seed = np.random.SeedSequence([self.config.seed, self.info.rank, self.step])
        generator = torch.Generator().manual_seed(int(worker_seed.generate_state(1)[0]))
        workers = self.config.num_workers
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=workers,
            generator=generator,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
        )

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
            ema=self.ema,
            keep_last=self.config.keep_last,
            on_save=self.on_save,
        )

    def _train_step(self, batches: Iterator[Any]) -> dict[str, torch.Tensor | float]:
        """One optimiser step over `grad_accum` micro-batches: its metrics, loss and grad norm
        included, as they come (tensors are not read here)."""
        accum = self.config.grad_accum
        loss_sum = torch.zeros((), device=self.device)
        metric_sums: dict[str, torch.Tensor | float] = {}
        for micro in range(accum):
            batch = move_to_device(next(batches), self.device)
            with gradient_sync(self.wrapped, micro == accum - 1), self._autocast():
                loss, metrics = self.wrapped(batch)
                (loss / accum).backward()
            loss_sum += loss.detach().float()
            for key, value in metrics.items():
                value = value.detach() if torch.is_tensor(value) else float(value)
                metric_sums[key] = metric_sums.get(key, 0.0) + value / accum
        every_used = average_gradients(self.params) if self.ddp_pending else True
        norm = self._grad_norm()
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, self.step + 1)
        if self.ddp_pending:
            self.wrapped = wrap_ddp(self.model, self.device, find_unused_parameters=not every_used)
            self.ddp_pending = False
            log.info("DDP with find_unused_parameters=%s", not every_used)
        return {**metric_sums, "loss": loss_sum / accum, "grad_norm": norm.detach()}

    def _grad_norm(self) -> torch.Tensor:
        """The gradients' total 2-norm, clipping them to `grad_clip` when set; no host sync.

        Without a clip only the norm is taken: clipping to infinity would multiply every
        gradient by 1."""
        if self.config.grad_clip is not None:
            return torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        return torch.nn.utils.get_total_norm(grads)

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
        batches = iter(self.loader())
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            disable=None if info.is_main else True,
            dynamic_ncols=True,
        )
        window = MetricWindow()
        tick = time.perf_counter()
        try:
            while self.step < config.steps:
                window.add(self._train_step(batches))
                self.step += 1
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
                    window, tick = MetricWindow(), time.perf_counter()
                if self.step % config.save_every == 0 or self.step == config.steps:
                    self._check_finite(window)
                    last_ckpt = self.save()
        finally:
            bar.close()
            logger.close()
        if info.is_main and logger.path.exists():
            plot_loss_curve(logger.path, self.out_dir / LOSS_CURVE_FILE)
        barrier()
        self.close()
        return TrainResult(self.step, last_ckpt, last_metrics)

    def _check_finite(self, window: MetricWindow) -> None:
        """Refuse to go on (or save) after a non-finite loss in the window's steps."""
        loss = window.means().get("loss", 0.0) if window.steps else 0.0
        if not math.isfinite(loss):
            first = self.step - window.steps + 1
            raise FloatingPointError(f"non-finite loss {loss} in steps {first}..{self.step}")

    def _window_metrics(self, window: MetricWindow, elapsed: float) -> dict[str, float]:
        """Average the window's steps (one device sync), then the processes (rank 0 logs)."""
        self._check_finite(window)
        out = mean_metrics(window.means())
        out["lr"] = self.scheduler.get_last_lr()[0]
        out["samples_per_s"] = window.steps * self.config.batch_size / max(elapsed, 1e-9)
        return out

    def close(self) -> None:
        """Leave the process group if this trainer created it (`train` does so at the end)."""
        if self._owns_group:
            torch.distributed.destroy_process_group()
            self._owns_group = False
