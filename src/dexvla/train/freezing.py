"""Which parts of a `DexVLAPolicy` a stage trains: frozen towers and LoRA adapters.

The engine optimises whatever has `requires_grad`; this module sets it from a `StageConfig`
before training, and folds LoRA adapters back into plain weights before export.
"""

from __future__ import annotations

from peft import LoraConfig
from peft.tuners.lora import LoraModel
from torch import nn

from dexvla.policy.modeling import DexVLAPolicy
from dexvla.train.recipes import StageConfig


def apply_freezing(policy: DexVLAPolicy, config: StageConfig) -> LoraModel | None:
    """Set `requires_grad` as the stage config says; inject LoRA adapters for `llm="lora"`.

    Fusion and expert always train. LoRA adapters go into the language model's decoder
    layers only (`lora_targets`), never the vision tower. Returns the LoRA tuner (needed to
    merge the adapters before export) or None.
    """
    policy.requires_grad_(True)
    if config.freeze_vision:
        policy.vlm.model.visual.requires_grad_(False)
    if config.llm == "full":
        return None
    language_model = policy.vlm.model.language_model
    language_model.requires_grad_(False)
    policy.vlm.lm_head.requires_grad_(False)
    if config.llm == "frozen":
        return None
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_targets),
    )
    return LoraModel(language_model, lora, "default")


def merge_lora(policy: DexVLAPolicy, tuner: LoraModel) -> None:
    """Fold the adapters into the base weights, leaving plain Linear layers (strict-loadable)."""
    policy.vlm.model.language_model = tuner.merge_and_unload()


def trainable_parameters(model: nn.Module) -> list[str]:
    """The names of the parameters the optimiser will update."""
    return [name for name, p in model.named_parameters() if p.requires_grad]
