"""The three stages as data: each stage's recipe, the `StageConfig` and the named presets.

A `StageRecipe` says what differs between the stages (what is built, what `--init` holds,
which data it needs); `StageConfig.recipe` looks it up once, and the stage code reads its
fields instead of testing stage numbers:

1. the expert alone on a mixture of embodiments (`dexvla.train.stage1`);
2. VLM + expert jointly, the expert initialised from stage 1 through an explicit key mapping;
3. continued from a stage-2 `final/` on sub-step-annotated data.

`StageConfig` is one stage's full settings (policy preset, `TrainConfig`, data and freezing
options); its `option` fields are also `dexvla train` flags. `STAGE_PRESETS` names them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from dexvla.embodiments import get_embodiment
from dexvla.policy.configuration import (
    ENV_STATE_USES,
    POLICY_PRESETS,
    POSITION_CONDITIONS,
    EnvStateUse,
    PolicyConfig,
    expert_heads,
    get_policy_preset,
)
from dexvla.policy.diffusion import PREDICTION_TYPES
from dexvla.schema import check_known_fields
from dexvla.train.config import (
    TrainConfig,
    flag,
    parse_floats,
    parse_names,
    parse_size,
    switch,
)

LlmMode = Literal["full", "frozen", "lora"]
LLM_MODES: tuple[str, ...] = get_args(LlmMode)
# The linear layers of Qwen2-VL's language model (attention and MLP of every decoder layer).
QWEN2_LM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class StageRecipe:
    """What one stage builds, starts from, needs and exports.

    `builds`: "expert" is `Stage1Policy` (frozen Qwen2-VL encoders, a trainable projection and
    ScaleDP; the VLM freezing options do not apply; exported as a stage-1 artefact); "policy"
    is `DexVLAPolicy` (frozen and LoRA-adapted as the config says; exported with
    `save_pretrained`, LoRA merged). `init`: what `--init` holds: "none" (ignored), "expert" (a
    stage-1 artefact whose expert is loaded), "policy" (a stage-2 policy continued as it is:
    architecture, heads, weights and fallback statistics). `without_init` is said when no
    `--init` is given: an error when `init_required`, else a warning (empty: nothing said).
    `needs_substeps` refuses data without sub-step annotations.
    """

    builds: Literal["expert", "policy"]
    init: Literal["none", "expert", "policy"]
    init_required: bool = False
    without_init: str = ""
    needs_substeps: bool = False


STAGE_RECIPES: dict[int, StageRecipe] = {
    1: StageRecipe(builds="expert", init="none"),
    2: StageRecipe(
        builds="policy",
        init="expert",
        without_init="stage 2 without --init: the expert starts from scratch (no stage 1)",
    ),
    3: StageRecipe(
        builds="policy",
        init="policy",
        init_required=True,
        without_init="stage 3 continues a stage-2 policy: pass --init <stage-2 out>/final",
        needs_substeps=True,
    ),
}


@dataclass(frozen=True)
class StageConfig:
    """One training stage: what is trained, on what data, with which optimiser settings.

    `embodiments` replaces the preset's expert heads (None keeps them); `image_size` replaces
    the preset's camera resolution (None keeps it). `data_weights` weigh the datasets of a
    mixture (None: proportional to their frame counts). `freeze_vision` freezes the Qwen2-VL
    vision tower (the paper's stage 2); `llm` trains the language model fully, freezes it, or
    trains LoRA adapters (`lora_*`) on `lora_targets`. `llm_loss_weight`, `use_reasoning` and
    `noise_samples` go into the policy config. `vlm_path` replaces the VLM preset's
    `pretrained` hub id with a local directory (a stage-3 run takes its VLM from `--init`).
    `env_state` and `env_state_loss_weight` set `PolicyConfig`'s simulation-only aids; the
    object-position width comes from the data (`policy_config(env_state_dim)`).
    `chunk_size` and `prediction_type` replace the preset's actions per chunk and diffusion
    target (None keeps them). Stage 1 ignores the VLM options but `vlm_path`: it never runs
    the VLM, only its encoders.
    """

    name: str
    stage: int
    policy: str = field(metadata=flag(help="replace the preset's policy preset (e.g. dexvla-2b-l)"))
    train: TrainConfig = field(default_factory=TrainConfig)
    embodiments: tuple[str, ...] | None = field(
        default=None,
        metadata=flag(type=parse_names, help="expert heads, comma-separated (default: preset's)"),
    )
    image_size: tuple[int, int] | None = field(
        default=None, metadata=flag(type=parse_size, help="camera size HxW fed to Qwen2-VL")
    )
    pad: Literal["last", "zero"] = "last"
    data_weights: tuple[float, ...] | None = field(
        default=None, metadata=flag(type=parse_floats, help="one weight per dataset: w1,w2")
    )
    freeze_vision: bool = field(
        default=True,
        metadata=switch(
            "freeze the vision tower (the paper's choice and the 2b presets'; the tiny presets "
            "train it, as their vision tower starts from random weights)"
        ),
    )
    llm: LlmMode = field(default="full", metadata=flag(choices=LLM_MODES))
    lora_rank: int = field(default=16, metadata=flag(type=int))
    lora_alpha: int = field(default=32, metadata=flag(type=int))
    lora_dropout: float = field(default=0.05, metadata=flag(type=float))
    lora_targets: tuple[str, ...] = QWEN2_LM_LINEARS
    llm_loss_weight: float = field(default=1.0, metadata=flag(type=float))
    use_reasoning: bool = field(
        default=True,
        metadata=flag(
            name="--no-reasoning", action="store_false", help="ablation without sub-step reasoning"
        ),
    )
    vlm_path: str | None = field(
        default=None,
        metadata=flag(
            help="a local Qwen2-VL directory used instead of the VLM preset's pretrained hub id "
            "(offline clusters)"
        ),
    )
    noise_samples: int = field(
        default=1,
        metadata=flag(
            type=int,
            help="diffusion noise draws per observation in the loss (the VLM runs once for all)",
        ),
    )
    env_state: EnvStateUse = field(
        default="none",
        metadata=flag(
            choices=ENV_STATE_USES,
            help="simulation only: 'aux' predicts the recorded object positions from the pooled "
            "prompt (a training-time loss), 'oracle' feeds them to the expert (a diagnostic), "
            "'predicted' feeds the recorded ones in training and the VLM's prediction at "
            "inference; in stage 1 'oracle'/'predicted' add them to the expert's condition",
        ),
    )
    env_state_loss_weight: float = field(default=1.0, metadata=flag(type=float))
    chunk_size: int | None = field(
        default=None,
        metadata=flag(
            type=int,
            help="actions per predicted chunk (default: the preset's, 50 as the paper; at "
            "least the 16 executed per chunk)",
        ),
    )
    prediction_type: str | None = field(
        default=None,
        metadata=flag(
            choices=PREDICTION_TYPES,
            help="what the expert predicts from a noised chunk (default: the preset's, "
            "'epsilon' as the paper); 'sample' predicts the clean chunk itself",
        ),
    )

    def __post_init__(self) -> None:
        for name in ("embodiments", "image_size", "data_weights", "lora_targets"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        errors: list[str] = []
        if self.stage not in STAGE_RECIPES:
            errors.append(f"stage must be one of {list(STAGE_RECIPES)}, got {self.stage!r}")
        if self.policy not in POLICY_PRESETS:
            errors.append(
                f"unknown policy preset {self.policy!r} (known: {', '.join(POLICY_PRESETS)})"
            )
        if self.llm not in LLM_MODES:
            errors.append(f"llm must be one of {LLM_MODES}, got {self.llm!r}")
        if self.lora_rank < 1 or self.lora_alpha <= 0:
            errors.append(
                f"lora_rank must be >= 1 and lora_alpha > 0, got {self.lora_rank}, "
                f"{self.lora_alpha}"
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            errors.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        bad = sorted(set(self.lora_targets) - set(QWEN2_LM_LINEARS))
        if bad or not self.lora_targets:
            errors.append(
                f"lora_targets {list(self.lora_targets)} must be a non-empty subset of Qwen2-VL's "
                f"language-model linears {list(QWEN2_LM_LINEARS)}"
            )
        if self.pad not in ("last", "zero"):
            errors.append(f"pad must be 'last' or 'zero', got {self.pad!r}")
        if self.data_weights is not None and (
            not self.data_weights or any(w <= 0 for w in self.data_weights)
        ):
            errors.append(f"data_weights must be positive numbers, got {self.data_weights}")
        if self.vlm_path is not None and not Path(self.vlm_path).is_dir():
            errors.append(f"vlm_path {self.vlm_path} is not a directory")
        if self.llm_loss_weight < 0:
            errors.append(f"llm_loss_weight must be >= 0, got {self.llm_loss_weight}")
        if self.stage == 1 and self.env_state not in ("none", *POSITION_CONDITIONS):
            errors.append(
                f"env_state {self.env_state!r} trains a head on the VLM, which stage 1 does not "
                f"run; stage 1 takes one of {('none', *POSITION_CONDITIONS)}"
            )
        for name in self.embodiments or ():
            try:
                get_embodiment(name)
            except KeyError as error:
                errors.append(str(error.args[0]))
        if errors:
            raise ValueError(f"invalid stage config {self.name!r}: " + "; ".join(errors))
        self.policy_config()  # the preset with these overrides must itself be valid

    @property
    def recipe(self) -> StageRecipe:
        """What this stage builds, starts from and needs."""
        return STAGE_RECIPES[self.stage]

    def policy_config(self, env_state_dim: int = 1) -> PolicyConfig:
        """The policy preset with this stage's heads, camera size and loss options.

        `env_state_dim` is the data's object-position width, used when `env_state` is not
        "none" (the default 1 only lets the config be checked before the data is open).
        """
        config = get_policy_preset(self.policy)
        vlm, expert = config.vlm, config.expert
        if self.image_size is not None:
            vlm = dataclasses.replace(vlm, image_size=self.image_size)
        if self.vlm_path is not None:
            vlm = dataclasses.replace(vlm, pretrained=self.vlm_path)
        if self.embodiments is not None:
            expert = dataclasses.replace(expert, embodiments=expert_heads(self.embodiments))
        if self.chunk_size is not None:
            expert = dataclasses.replace(expert, chunk_size=self.chunk_size)
        env_dim = env_state_dim if self.env_state != "none" else 0
        diffusion = config.diffusion
        if self.prediction_type is not None:
            diffusion = dataclasses.replace(diffusion, prediction_type=self.prediction_type)
        return config.replace(
            vlm=vlm,
            expert=expert,
            diffusion=diffusion,
            env_state=self.env_state,
            env_state_dim=env_dim,
            **self.loss_options(),
        )

    def loss_options(self) -> dict[str, Any]:
        """The policy-config fields this stage sets (also applied to a continued policy)."""
        return {
            "llm_loss_weight": self.llm_loss_weight,
            "use_reasoning": self.use_reasoning,
            "noise_samples": self.noise_samples,
            "env_state_loss_weight": self.env_state_loss_weight,
        }

    def replace(self, **changes: Any) -> StageConfig:
        """A copy with fields replaced; `TrainConfig` fields may be given directly (`lr=...`)."""
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        train_changes = {k: changes.pop(k) for k in list(changes) if k in train_fields}
        if train_changes:
            changes["train"] = dataclasses.replace(
                changes.get("train", self.train), **train_changes
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["train"] = self.train.to_dict()
        for name in ("embodiments", "image_size", "data_weights", "lora_targets"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageConfig:
        check_known_fields(cls, data)
        data = dict(data)
        data["train"] = TrainConfig.from_dict(data.get("train", {}))
        return cls(**data)


TINY_TRAIN = TrainConfig(
    steps=200,
    batch_size=8,
    lr=5e-4,
    warmup_steps=100,
    schedule="cosine",
    ema=0.995,
    save_every=100,
    log_every=10,
)


def _tiny(stage: int, **options: Any) -> StageConfig:
    """The tiny presets train the vision tower: frozen, its random weights would hide the cube
    (measured: 0/10 touched frozen, 2/10 touched and lifted trained; docs/evaluation.md). They
    also use a higher learning rate, EMA and 4 noise draws per observation: in 1500 stage-2
    steps (about one pass over the demo's data), with the fixed demonstrations, they cut the
    action loss from 0.076 to 0.014 (docs/evaluation.md)."""
    train = options.pop("train", None) or TINY_TRAIN
    return StageConfig(
        name=f"tiny-stage{stage}",
        stage=stage,
        policy="tiny",
        train=train,
        freeze_vision=False,
        noise_samples=4,
        **options,
    )


# Loader workers of the 2b presets: one core stays with the training process.
WORKERS_2B = min(8, (os.cpu_count() or 2) - 1)


def _dexvla_2b(stage: int, train: TrainConfig, **options: Any) -> StageConfig:
    return StageConfig(
        name=f"2b-stage{stage}", stage=stage, policy="dexvla-2b", train=train, **options
    )


# The paper's stage-2 and stage-3 settings (released scripts): AdamW (0.9, 0.98), lr 2e-5,
# batch 96, bf16, gradient checkpointing; stage 2 100k steps constant, stage 3 80k cosine.
# Stage 1's settings are not published: the values below are this project's choice.
_PAPER = dict(
    batch_size=96,
    lr=2e-5,
    betas=(0.9, 0.98),
    precision="bf16",
    gradient_checkpointing=True,
    save_every=5000,
    log_every=50,
    num_workers=WORKERS_2B,
)
STAGE_PRESETS: dict[str, StageConfig] = {
    "tiny-stage1": _tiny(1),
    "tiny-stage2": _tiny(2),
    "tiny-stage3": _tiny(3, train=dataclasses.replace(TINY_TRAIN, lr=1e-4, warmup_steps=0)),
    "2b-stage1": _dexvla_2b(
        1,
        TrainConfig(
            steps=100_000,
            batch_size=256,
            lr=1e-4,
            schedule="cosine",
            warmup_steps=1000,
            precision="bf16",
            save_every=5000,
            log_every=50,
            num_workers=WORKERS_2B,
        ),
        embodiments=("aloha", "sawyer", "hand"),
    ),
    "2b-stage2": _dexvla_2b(2, TrainConfig(steps=100_000, schedule="constant", **_PAPER)),
    "2b-stage3": _dexvla_2b(3, TrainConfig(steps=80_000, schedule="cosine", **_PAPER)),
}


def get_stage_preset(name: str) -> StageConfig:
    """A stage preset by name, with an error that lists the known ones."""
    if name not in STAGE_PRESETS:
        raise KeyError(
            f"unknown stage preset {name!r}; known stage presets: {', '.join(STAGE_PRESETS)}"
        )
    return STAGE_PRESETS[name]


def stage_preset_for(policy: str, stage: int) -> StageConfig:
    """The stage preset that trains the policy preset `policy` in `stage`.

    A stage preset written for `policy` is taken as it is; otherwise one written for a policy
    with the same VLM backbone is taken with its policy replaced (`dexvla-2b-l` trains with
    the `2b-stageN` recipes).
    """
    backbone = get_policy_preset(policy).vlm.name
    presets = [preset for preset in STAGE_PRESETS.values() if preset.stage == stage]
    for preset in presets:
        if preset.policy == policy:
            return preset
    for preset in presets:
        if get_policy_preset(preset.policy).vlm.name == backbone:
            return dataclasses.replace(preset, name=f"{preset.name}:{policy}", policy=policy)
    raise KeyError(f"no stage-{stage} preset trains the policy preset {policy!r}")
