"""Multi-process training on plain `torch.distributed`: process group, wrapping, data sharding.

Why not `accelerate`: the engine needs three things it would hide — state dicts, full or
sharded, for its pickle-free checkpoints (`torch.distributed.checkpoint.state_dict` gives them
for plain, DDP and FSDP2 modules alike), a sampler whose position is part of the checkpoint, and
a CPU/gloo path tested here. Launch with `torchrun`; the env vars it sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are all this module reads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from dexvla.runtime.device import resolve_device as resolve_runtime_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """`dexvla.runtime.device.resolve_device`, with a bare "cuda" made this process's GPU."""
    device = resolve_runtime_device(spec)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_spec: str = "auto") -> tuple[DistInfo, torch.device, bool]:
    """Join the process group `torchrun` describes (gloo on CPU, nccl on CUDA).

    Returns the rank info, this process's device, and whether this call created the group (and
    so should destroy it). A single process (no WORLD_SIZE, or 1) gets no group at all.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if world_size <= 1:
        return DistInfo(), device, False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
        created = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank), device, created


def barrier() -> None:
    """Wait for every process; a no-op when not distributed."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order (a one-element list when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every process (`obj` itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(
    tensors: dict[str, torch.Tensor] | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """Rank 0's tensors on every process, one at a time (only rank 0 read them from disk)."""
    if not (dist.is_available() and dist.is_initialized()):
        assert tensors is not None
        return tensors
    shapes = broadcast_object(
        {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()} if tensors is not None else None
    )
    out = {}
    for key, (shape, dtype) in shapes.items():
        if dist.get_rank() == 0:
            assert tensors is not None
            value = tensors[key].to(device)
        else:
            value = torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(value, src=0)
        out[key] = value
    return out


def mean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Average each metric over the processes that report it (for logging only)."""
    gathered = all_gather_objects(metrics)
    keys = sorted({k for m in gathered for k in m})
    return {k: float(np.mean([m[k] for m in gathered if k in m])) for k in keys}


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (before wrapping: FSDP shards,
    and the DDP probe trains, whatever each rank holds)."""
    if dist.is_available() and dist.is_initialized():
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)


def mixed_precision(precision: str, device: torch.device) -> MixedPrecisionPolicy:
    """FSDP2's policy: bf16 compute copies and fp32 gradient reduction for `precision="bf16"`
    on CUDA; fp32 everywhere else (the same code path, as CPU runs and the tests take it)."""
    if precision == "bf16" and device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)


def shard_model(model: nn.Module, policy: MixedPrecisionPolicy) -> nn.Module:
    """FSDP2 (`fully_shard`) with frozen parameters left out of every group.

    The model's `fsdp_wrap_modules()` (e.g. transformer blocks) are sharded one by one, then
    the root, so only one block's full weights live at a time. Frozen parameters (a frozen
    vision tower, LoRA's base weights) stay whole on every rank: they are never all-gathered
    nor reduced, and a block with nothing to train is not a group at all.
    """
    broadcast_module(model)
    frozen = {p for p in model.parameters() if not p.requires_grad}
    for sub in getattr(model, "fsdp_wrap_modules", list)():
        if any(p.requires_grad for p in sub.parameters()):
            fully_shard(sub, mp_policy=policy, ignored_params=frozen)
    fully_shard(model, mp_policy=policy, ignored_params=frozen)
    return model


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    """DDP with gradients as views of the all-reduce buckets (no copy in and out)."""
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
        gradient_as_bucket_view=True,
    )


@torch.no_grad()
def average_gradients(params: Sequence[nn.Parameter]) -> bool:
    """Average gradients over the processes by hand, as DDP would; True when every process
    gave every parameter a gradient (so DDP can skip `find_unused_parameters`).

    A parameter without a gradient on every process keeps none (no optimiser state, as under
    DDP); one with a gradient somewhere counts as zero where it has none.
    """
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
    everywhere, anywhere = used.clone(), used.clone()
    dist.all_reduce(everywhere, op=dist.ReduceOp.MIN)
    dist.all_reduce(anywhere, op=dist.ReduceOp.MAX)
    world = dist.get_world_size()
    for param, some in zip(params, anywhere.tolist(), strict=True):
        if not some:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)
        param.grad.div_(world)
    return bool(everywhere.all())


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module under a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
    if enabled:
        return contextlib.nullcontext()
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def rank_slices(global_batch: int, grad_accum: int, rank: int, world_size: int) -> list[slice]:
    """The parts of one optimiser step's global batch that `rank` takes, one per micro-step.

    The batch is cut into `grad_accum` micro-steps and each of those into `world_size`
    contiguous shards: micro-step `a` of rank `r` is shard `a * world_size + r`.
    """
    if global_batch % (grad_accum * world_size):
        raise ValueError(
            f"global batch {global_batch} must divide by grad_accum {grad_accum} x "
            f"world size {world_size}"
        )
    size = global_batch // (grad_accum * world_size)
    starts = [(a * world_size + rank) * size for a in range(grad_accum)]
    return [slice(start, start + size) for start in starts]


class ResumableBatchSampler(Sampler[list[int]]):
    """An endless stream of micro-batches for one process, resumable at any optimiser step.

    The global sample stream is epoch after epoch of a seeded permutation of the dataset
    (`numpy.random.default_rng([seed, epoch])`), so it depends only on the seed. Optimiser step
    `s` consumes stream positions `[s * B, (s + 1) * B)` of the global batch B; that slice is
    cut into `grad_accum` micro-steps and each micro-step into `world_size` contiguous shards,
    one per rank. Starting at `start_step` skips the consumed prefix exactly, on any number of
    processes.
    """

    def __init__(
        self,
        dataset_size: int,
        global_batch: int,
        grad_accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        start_step: int = 0,
    ) -> None:
        if dataset_size < 1:
            raise ValueError("the dataset is empty")
        self.slices = rank_slices(global_batch, grad_accum, rank, world_size)
        self.dataset_size = dataset_size
        self.global_batch = global_batch
        self.seed = seed
        self.start_step = start_step
        self._cached: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        """The dataset order of one epoch (the latest one is cached)."""
        if self._cached is None or self._cached[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.dataset_size)
            self._cached = (epoch, order)
        return self._cached[1]

    def indices(self, start: int, count: int) -> list[int]:
        """Dataset indices at global stream positions `[start, start + count)`."""
        out: list[int] = []
        n = self.dataset_size
        while count > 0:
            epoch, offset = divmod(start, n)
            take = min(count, n - offset)
            out.extend(int(i) for i in self.permutation(epoch)[offset : offset + take])
            start, count = start + take, count - take
        return out

    def micro_batches(self, step: int) -> Sequence[list[int]]:
        """This rank's `grad_accum` micro-batches of optimiser step `step`."""
        base = step * self.global_batch
        return [self.indices(base + s.start, s.stop - s.start) for s in self.slices]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield from self.micro_batches(step)
            step += 1


class ShardedBatches(Sampler[list[int]]):
    """Another sampler's global batches, cut into this rank's micro-batches.

    For samplers that choose whole batches themselves (e.g. one dataset of a mixture per
    batch): optimiser step `s` is the sampler's batch `s` of `global_batch` indices, cut by
    `rank_slices` like `ResumableBatchSampler` cuts its stream; iteration starts at batch
    `start_step`.
    """

    def __init__(
        self,
        batches: Sampler[list[int]],
        global_batch: int,
        grad_accum: int,
        rank: int,
        world_size: int,
        start_step: int,
    ) -> None:
        self.slices = rank_slices(global_batch, grad_accum, rank, world_size)
        self.batches = batches
        self.start_step = start_step

    def __len__(self) -> int:
        return (len(self.batches) - self.start_step) * len(self.slices)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        for step, batch in enumerate(self.batches):
            if step < self.start_step:
                continue
            for part in self.slices:
                yield batch[part]
