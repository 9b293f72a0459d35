"""The generic training engine: config, loop, checkpoints, metrics, multi-process support.

It trains any `nn.Module` whose `forward(batch)` returns `(loss, metrics)`; the stage code
decides what the module is and which of its parameters are trainable.
"""

from dexvla.train.checkpoint import (
    check_resume_config,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_weights,
    prune_checkpoints,
    read_checkpoint_config,
    save_checkpoint,
)
from dexvla.train.config import ConfigMismatchError, TrainConfig
from dexvla.train.distributed import DistInfo, ResumableBatchSampler, init_distributed
from dexvla.train.engine import EMA, Trainer, TrainResult, seed_everything
from dexvla.train.metrics import MetricsLogger, plot_loss_curve, read_metrics

__all__ = [
    "EMA",
    "ConfigMismatchError",
    "DistInfo",
    "MetricsLogger",
    "ResumableBatchSampler",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "check_resume_config",
    "init_distributed",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_model_weights",
    "plot_loss_curve",
    "prune_checkpoints",
    "read_checkpoint_config",
    "read_metrics",
    "save_checkpoint",
    "seed_everything",
]
