"""DexVLA's three-stage curriculum on top of the generic engine: build, train, export.

`run_stage` reads the stage's recipe (`dexvla.train.recipes`), opens its data
(`dexvla.train.stage_data`), builds the model the recipe names with its initial weights and
frozen parts (`dexvla.train.freezing`), trains it with `Trainer`, and exports `<out>/final/`.
`StageConfig`, `STAGE_PRESETS`, `get_stage_preset` and `stage_preset_for` are importable
from here too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from accelerate import init_empty_weights
from peft.tuners.lora import LoraModel
from torch import nn

from dexvla.data.windows import collate_windows
from dexvla.io import atomic_write_json, read_json
from dexvla.policy.checkpoint import STATS_NAME, PolicyCheckpoint, read_policy_checkpoint
from dexvla.policy.configuration import PolicyConfig
from dexvla.policy.diffusion import DiffusionConfig
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.policy.processor import DexVLAProcessor
from dexvla.policy.vlm import Qwen2VL, load_tokenizer
from dexvla.train.checkpoint import checkpoint_problem, latest_checkpoint, load_model_weights
from dexvla.train.engine import CHECKPOINTS_DIR, Trainer, seed_everything
from dexvla.train.freezing import apply_freezing, merge_lora, trainable_parameters
from dexvla.train.recipes import STAGE_PRESETS, StageConfig, get_stage_preset, stage_preset_for
from dexvla.train.stage1 import (
    Stage1Policy,
    load_stage1_expert,
    read_stage1_config,
    stage1_expert_config,
)
from dexvla.train.stage_data import StageData, load_stage_data

__all__ = [
    "FINAL_DIR",
    "STAGE_CONFIG_NAME",
    "STAGE_PRESETS",
    "StageConfig",
    "build_model",
    "export_checkpoint",
    "export_final",
    "get_stage_preset",
    "open_stage",
    "run_stage",
    "stage_preset_for",
]

log = logging.getLogger(__name__)

STAGE_CONFIG_NAME = "stage_config.json"
FINAL_DIR = "final"


# ---------------------------------------------------------------------------------- models
def read_init_policy(config: StageConfig, init: Path) -> PolicyCheckpoint:
    """The policy checkpoint a stage continues; errors say what `--init` should be."""
    try:
        return read_policy_checkpoint(init)
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"--init: {error}; {config.recipe.without_init}") from None


def stage_policy_config(
    config: StageConfig, init: Path | None, env_state_dim: int = 1
) -> PolicyConfig:
    """The policy a stage builds; one started from a stage-1 artefact (`--init`) takes the
    artefact's expert architecture (sizes, layout, chunk) with the stage's heads, and executes
    at most the artefact's chunk of actions per chunk."""
    policy = config.policy_config(env_state_dim)
    if config.recipe.init != "expert" or init is None:
        return policy
    artefact = read_stage1_config(init)
    expert = stage1_expert_config(artefact, init)
    if config.chunk_size is not None and config.chunk_size != expert.chunk_size:
        raise ValueError(
            f"--init {init} predicts chunks of {expert.chunk_size} actions: its expert cannot "
            f"continue with chunks of {config.chunk_size} (drop --chunk-size)"
        )
    expert = dataclasses.replace(expert, embodiments=policy.expert.embodiments)
    steps = min(policy.n_action_steps, expert.chunk_size)
    if steps != policy.n_action_steps:
        log.warning("--init %s predicts chunks of %d actions: executing %d", init, steps, steps)
    diffusion = policy.diffusion
    recorded = artefact.get("policy", {}).get("diffusion")
    if recorded is not None:  # the expert keeps the target it was trained to predict
        diffusion = dataclasses.replace(
            diffusion, prediction_type=DiffusionConfig.from_dict(recorded).prediction_type
        )
        asked = config.prediction_type
        if asked is not None and asked != diffusion.prediction_type:
            raise ValueError(
                f"--init {init} predicts {diffusion.prediction_type!r}: its expert cannot "
                f"continue as a {asked!r} predictor (drop --prediction-type)"
            )
    return policy.replace(expert=expert, n_action_steps=steps, diffusion=diffusion)


def check_continued_overrides(config: StageConfig, policy: PolicyConfig, init: Path) -> None:
    """A continued policy keeps its architecture: refuse heads or camera sizes that differ."""
    problems = []
    if config.image_size is not None and tuple(config.image_size) != policy.vlm.image_size:
        problems.append(f"image size {config.image_size} (init: {policy.vlm.image_size})")
    if config.embodiments is not None and set(config.embodiments) != set(policy.embodiments):
        problems.append(f"expert heads {list(config.embodiments)} (init: {policy.embodiments})")
    if config.env_state != policy.env_state:
        problems.append(f"env_state {config.env_state!r} (init: {policy.env_state!r})")
    if config.chunk_size is not None and config.chunk_size != policy.chunk_size:
        problems.append(f"chunk size {config.chunk_size} (init: {policy.chunk_size})")
    kind = policy.diffusion.prediction_type
    if config.prediction_type is not None and config.prediction_type != kind:
        problems.append(f"prediction type {config.prediction_type!r} (init: {kind!r})")
    if problems:
        raise ValueError(
            f"stage {config.stage} continues {init} as it is and cannot change its "
            f"{'; '.join(problems)}"
        )


def continued_policy(
    config: StageConfig, data: StageData, init: Path | None, weights: bool = True
) -> DexVLAPolicy:
    """The `--init` policy with this stage's loss options and the data's statistics (without
    its weights, `weights=False`: its architecture only, built as the caller's context says)."""
    if init is None:
        raise ValueError(config.recipe.without_init)
    if weights:
        policy = DexVLAPolicy.from_pretrained(init)
    else:
        checkpoint = read_policy_checkpoint(init)
        policy = DexVLAPolicy(
            checkpoint.config,
            tokenizer=load_tokenizer(checkpoint.config.vlm, checkpoint.tokenizer_dir),
            vlm=Qwen2VL(checkpoint.vlm_architecture),
        )
    policy.config = policy.config.replace(**config.loss_options())
    missing = [e for e in data.embodiments if e not in policy.config.embodiments]
    if missing:
        raise ValueError(
            f"{init} has no expert head for the data's embodiment(s) {missing}; it serves "
            f"{list(policy.config.embodiments)}"
        )
    policy.processor.set_stats(data.stats)
    return policy


def build_model(
    config: StageConfig, data: StageData, init: Path | None, weights: bool = True
) -> tuple[nn.Module, LoraModel | None]:
    """The stage's model with its initial weights and frozen parts (and the LoRA tuner);
    `weights=False` skips reading `--init`'s weights (they are about to be replaced)."""
    recipe = config.recipe
    if recipe.builds == "expert":
        return Stage1Policy(config.policy_config(data.env_state_dim)), None
    if recipe.init == "policy":
        policy = continued_policy(config, data, init, weights)
    else:
        policy_config = stage_policy_config(config, init, data.env_state_dim)
        processor = DexVLAProcessor(
            policy_config.vlm.image_size, policy_config.embodiments, data.stats
        )
        policy = DexVLAPolicy(policy_config, processor=processor)
        if recipe.init == "expert" and init is not None and weights:
            load_stage1_expert(policy, init)
    policy.train()
    return policy, apply_freezing(policy, config)


# ----------------------------------------------------------------------------------- run
def check_resume(out_dir: Path, config: StageConfig) -> None:
    """A resumed run must use the saved stage options (the engine checks `train` itself)."""
    path = out_dir / STAGE_CONFIG_NAME
    if not path.is_file():
        return
    saved = read_json(path, "stage config")
    mine = config.to_dict()
    diff = [
        f"{key}: saved {saved.get(key)!r} != now {mine[key]!r}"
        for key in sorted(mine)
        if key not in ("train", "name", "vlm_path") and saved.get(key) != mine[key]
    ]
    if diff:
        raise ValueError(f"{out_dir} was trained with other stage options: {'; '.join(diff)}")


def open_stage(
    config: StageConfig, data_paths: Sequence[str | Path], init: Path | None
) -> StageData:
    """Check `--init` against the stage's recipe and open its training data (stats merged
    with a continued policy's)."""
    recipe = config.recipe
    if init is not None and not init.is_dir():
        raise FileNotFoundError(f"--init {init}: no such checkpoint directory")
    if init is None and recipe.init_required:
        raise ValueError(recipe.without_init)
    if init is None and recipe.without_init:
        log.warning(recipe.without_init)
    if init is not None and recipe.init == "none":
        log.warning("stage %d starts from scratch: --init %s is not used", config.stage, init)
    policy_config, base_stats = stage_policy_config(config, init), None
    if recipe.init == "policy":
        assert init is not None
        continued = read_init_policy(config, init)
        check_continued_overrides(config, continued.config, init)
        policy_config, base_stats = continued.config, continued.stats
    return load_stage_data(data_paths, config, policy_config, base_stats)


def run_stage(
    config: StageConfig,
    data_paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    init: str | Path | None = None,
    resume: bool = False,
) -> Path:
    """Train one stage into `out_dir` and export `<out_dir>/final/`; returns that directory.

    Checkpoints carry `stage_config.json` and `stats.json` beside the engine's files. The
    final directory is written from the last checkpoint (its EMA weights when EMA is on): a
    `save_pretrained` directory for a `DexVLAPolicy` (LoRA merged), the stage-1 artefact for
    the expert alone.
    """
    out_dir = Path(out_dir)
    init_path = Path(init) if init is not None else None
    data = open_stage(config, data_paths, init_path)
    if resume:
        check_resume(out_dir, config)
    elif latest_checkpoint(out_dir / CHECKPOINTS_DIR) is not None:
        raise ValueError(
            f"{out_dir} already holds checkpoints: pass --resume to continue that run, or pick "
            "a new --out"
        )
    # The run's seed decides the initial weights too (heads no batch trains stay as built); a
    # resumed run's are replaced by its checkpoint's.
    seed_everything(config.train.seed)
    model, tuner = build_model(config, data, init_path)
    log.info("stage %d: %d trainable tensors", config.stage, len(trainable_parameters(model)))

    def on_save(directory: Path) -> None:
        atomic_write_json(directory / STAGE_CONFIG_NAME, config.to_dict())
        data.stats.save(directory / STATS_NAME)

    trainer = Trainer(
        model,
        data.dataset,
        config.train,
        out_dir,
        collate_fn=collate_windows,
        resume=resume,
        on_save=on_save,
        batch_sampler=data.batch_sampler,
    )
    if trainer.info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / STAGE_CONFIG_NAME, config.to_dict())
    result = trainer.train()
    final = out_dir / FINAL_DIR
    if not trainer.info.is_main:
        return final
    del trainer, model, tuner
    if result.checkpoint is None:
        raise RuntimeError(f"training into {out_dir} ended without a checkpoint")
    return export_final(config, data, init_path, Path(result.checkpoint), final)


def export_final(
    config: StageConfig, data: StageData, init: Path | None, checkpoint: Path, final: Path
) -> Path:
    """Rebuild the stage's model on the CPU, load `checkpoint` (EMA when on), write `final`.

    The checkpoint holds every weight, so the model is built without any (parameters on
    `meta`) and takes the checkpoint's tensors as they are read: one copy of the weights, not
    two. `--init` is needed only when it is the architecture.
    """
    with init_empty_weights():  # buffers stay real: non-persistent ones are in no checkpoint
        model, tuner = build_model(config, data, init, weights=False)
    load_model_weights(model, checkpoint, ema=config.train.ema is not None, assign=True)
    model.eval()
    if isinstance(model, Stage1Policy):
        model.save_final(final, data.stats, config.to_dict())
    else:
        assert isinstance(model, DexVLAPolicy)
        if tuner is not None:
            merge_lora(model, tuner)
        model.save_pretrained(final)
    atomic_write_json(final / STAGE_CONFIG_NAME, config.to_dict())
    return final


def export_checkpoint(
    checkpoint: Path, data_paths: Sequence[str | Path], out: Path, init: Path | None = None
) -> Path:
    """Export one kept checkpoint of a `run_stage` run as `export_final` exports the last (its
    stage options from the checkpoint's `stage_config.json`; the run's data and `--init`)."""
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise ValueError(f"{checkpoint} is not a complete checkpoint: {problem}")
    config = StageConfig.from_dict(read_json(checkpoint / STAGE_CONFIG_NAME, "stage config"))
    data = open_stage(config, data_paths, init)
    return export_final(config, data, init, checkpoint, out)
