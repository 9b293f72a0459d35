"""Training: the generic engine (config, loop, checkpoints, metrics, multi-process support) and
DexVLA's three-stage curriculum on top of it.

The engine trains any `nn.Module` whose `forward(batch)` returns `(loss, metrics)`; the stage
code (`dexvla.train.stages`) decides what the module is and which of its parameters train.
"""

from dexvla.train.checkpoint import (
    check_resume_config,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_weights,
    prune_checkpoints,
    read_train_config,
    save_checkpoint,
)
from dexvla.train.config import ConfigMismatchError, TrainConfig
from dexvla.train.distributed import (
    DistInfo,
    ResumableBatchSampler,
    ShardedBatches,
    init_distributed,
)
from dexvla.train.engine import Trainer, TrainResult, seed_everything, shuffled_batches
from dexvla.train.metrics import MetricsLogger, plot_loss_curve, read_metrics
from dexvla.train.optim import EMA
from dexvla.train.recipes import (
    STAGE_PRESETS,
    STAGE_RECIPES,
    StageConfig,
    StageRecipe,
    get_stage_preset,
    stage_preset_for,
)
from dexvla.train.stages import run_stage

__all__ = [
    "EMA",
    "STAGE_PRESETS",
    "STAGE_RECIPES",
    "ConfigMismatchError",
    "DistInfo",
    "MetricsLogger",
    "ResumableBatchSampler",
    "ShardedBatches",
    "StageConfig",
    "StageRecipe",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "check_resume_config",
    "get_stage_preset",
    "init_distributed",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_model_weights",
    "plot_loss_curve",
    "prune_checkpoints",
    "read_metrics",
    "read_train_config",
    "run_stage",
    "save_checkpoint",
    "seed_everything",
    "shuffled_batches",
    "stage_preset_for",
]
