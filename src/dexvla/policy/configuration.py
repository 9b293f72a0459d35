"""Policy configuration and the one registry of named model presets.

Three kinds of preset, each a dict from name to config: `VLM_PRESETS` (Qwen2-VL backbones),
`EXPERT_PRESETS` (ScaleDP sizes) and `POLICY_PRESETS` (a backbone + an expert + its heads).
Parameter counts are computed by building each model on the `meta` device, so listing the
billion-parameter presets allocates no weights and downloads nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers import Qwen2VLForConditionalGeneration as Qwen2VL

from dexvla.embodiments import get_embodiment
from dexvla.policy.diffusion import DiffusionConfig
from dexvla.policy.fusion import ReasoningFusion
from dexvla.policy.scaledp import ScaleDP, ScaleDPConfig
from dexvla.policy.vlm import VLMConfig, load_tokenizer, qwen2vl_config
from dexvla.schema import check_known_fields

EnvStateUse = Literal["none", "aux", "oracle", "predicted"]
ENV_STATE_USES: tuple[str, ...] = ("none", "aux", "oracle", "predicted")
# The uses whose expert condition takes object positions (an `env_embed` layer).
POSITION_CONDITIONS: tuple[str, ...] = ("oracle", "predicted")


@dataclass(frozen=True)
class PolicyConfig:
    """A full DexVLA policy: backbone, expert, diffusion, and how the two losses are weighed.

    The embodiments the policy serves are the expert's (`expert.embodiments`, one output head
    each). `n_action_steps` is how many actions of each chunk `select_action` executes.
    `use_reasoning=False` is the ablation without sub-step reasoning: the VLM is trained on the
    answer `Next action:` alone and the fusion sees no reasoning tokens. `noise_samples` is how
    many (noise, timestep) draws the training loss averages per observation: the VLM runs once
    and only the expert, a small part of a step's cost, runs on every draw.

    `env_state` uses the simulator's object positions (`observation.environment_state`, E =
    `env_state_dim` floats, simulation only): "aux" trains a linear head to predict them from
    the pooled prompt states (a training-only loss weighed by `env_state_loss_weight`, so the
    condition must hold where the objects are); "oracle" adds them to the condition vector, at
    training and inference (a privileged diagnostic: the ceiling with perfect vision);
    "predicted" does both: the recorded positions go into the condition in training
    (teacher-forced) and the head's own prediction at inference, so it needs no privileged
    input once trained.
    """

    name: str
    vlm: VLMConfig
    expert: ScaleDPConfig
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    n_action_steps: int = 16
    llm_loss_weight: float = 1.0
    use_reasoning: bool = True
    noise_samples: int = 1
    env_state: EnvStateUse = "none"
    env_state_dim: int = 0
    env_state_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in self.expert.embodiments:
            spec = get_embodiment(name)
            if self.expert.embodiments[name] != (spec.action_dim, spec.state_dim):
                raise ValueError(
                    f"policy {self.name!r}: expert head {name!r} has (action, state) dims "
                    f"{self.expert.embodiments[name]} but the embodiment registry says "
                    f"{(spec.action_dim, spec.state_dim)}"
                )
        if not 0 < self.n_action_steps <= self.expert.chunk_size:
            raise ValueError(
                f"n_action_steps must be in [1, chunk_size={self.expert.chunk_size}], "
                f"got {self.n_action_steps}"
            )
        if self.llm_loss_weight < 0:
            raise ValueError(f"llm_loss_weight must be >= 0, got {self.llm_loss_weight}")
        if not isinstance(self.noise_samples, int) or self.noise_samples < 1:
            raise ValueError(f"noise_samples must be an int >= 1, got {self.noise_samples!r}")
        if self.env_state not in ENV_STATE_USES:
            raise ValueError(f"env_state must be one of {ENV_STATE_USES}, got {self.env_state!r}")
        if self.env_state != "none" and self.env_state_dim < 1:
            raise ValueError(
                f"env_state {self.env_state!r} needs env_state_dim >= 1 (the width of the "
                f"data's observation.environment_state), got {self.env_state_dim}"
            )
        if self.env_state_loss_weight < 0:
            raise ValueError(
                f"env_state_loss_weight must be >= 0, got {self.env_state_loss_weight}"
            )

    @property
    def embodiments(self) -> tuple[str, ...]:
        return tuple(self.expert.embodiments)

    @property
    def chunk_size(self) -> int:
        return self.expert.chunk_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vlm": self.vlm.to_dict(),
            "expert": self.expert.to_dict(),
            "diffusion": self.diffusion.to_dict(),
            "n_action_steps": self.n_action_steps,
            "llm_loss_weight": self.llm_loss_weight,
            "use_reasoning": self.use_reasoning,
            "noise_samples": self.noise_samples,
            "env_state": self.env_state,
            "env_state_dim": self.env_state_dim,
            "env_state_loss_weight": self.env_state_loss_weight,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        check_known_fields(cls, data)
        data = dict(data)
        data["vlm"] = VLMConfig.from_dict(data["vlm"])
        data["expert"] = ScaleDPConfig.from_dict(data["expert"])
        data["diffusion"] = DiffusionConfig.from_dict(data["diffusion"])
        return cls(**data)

    def replace(self, **changes: Any) -> PolicyConfig:
        return dataclasses.replace(self, **changes)


def expert_heads(embodiments: tuple[str, ...] | list[str]) -> dict[str, tuple[int, int]]:
    """Expert output heads (action_dim, state_dim) for registered embodiments."""
    return {
        name: (get_embodiment(name).action_dim, get_embodiment(name).state_dim)
        for name in embodiments
    }


def vlm_hidden(config: VLMConfig) -> int:
    """The width of the backbone's hidden states (what the fusion pools)."""
    return int(config.text["hidden_size"])


# -------------------------------------------------------------------------------------- presets
VLM_PRESETS: dict[str, VLMConfig] = {
    "qwen2-vl-tiny": VLMConfig(
        name="qwen2-vl-tiny",
        text={
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 6, 6],
            },
        },
        vision={
            "depth": 2,
            "embed_dim": 64,
            "hidden_size": 128,
            "num_heads": 4,
            "mlp_ratio": 2,
        },
        image_size=(84, 84),
        max_new_tokens=24,
    ),
    # Qwen2-VL-2B-Instruct. The architecture below is used for counting on `meta`; weights,
    # architecture and tokenizer are read from `pretrained` (a local directory or hub id).
    "qwen2-vl-2b": VLMConfig(
        name="qwen2-vl-2b",
        pretrained="Qwen/Qwen2-VL-2B-Instruct",
        text={
            "vocab_size": 151936,
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [16, 24, 24],
            },
        },
        vision={
            "depth": 32,
            "embed_dim": 1280,
            "hidden_size": 1536,
            "num_heads": 16,
            "mlp_ratio": 4,
        },
        # The released code feeds 320x240 cameras: 252x308 after Qwen2-VL's rounding, 99 tokens.
        image_size=(252, 308),
        max_new_tokens=64,
    ),
}


# Sizes for the paper's 93M / 410M / 1B experts (counts with cond_dim 1536, chunk 50 and one
# 14-D embodiment; see docs/scaledp.md). H is the released code's size; B and L are chosen here
# because the released L (24 x 1024) is 463M, 13% over the paper's 410M.
# The tiny-L and tiny-H sizes keep the paper's ratios (93M : 410M : 1B = 1 : 4.4 : 10.2) at CPU
# scale for the expert-size ablation: 0.74M, 3.3M and 7.5M with the tiny VLM's cond_dim.
EXPERT_PRESETS: dict[str, ScaleDPConfig] = {
    "scaledp-tiny": ScaleDPConfig(depth=2, width=128, heads=4),
    "scaledp-tiny-l": ScaleDPConfig(depth=5, width=184, heads=8),
    "scaledp-tiny-h": ScaleDPConfig(depth=6, width=256, heads=8),
    "scaledp-b": ScaleDPConfig(depth=12, width=640, heads=10),
    "scaledp-l": ScaleDPConfig(depth=28, width=896, heads=14),
    "scaledp-h": ScaleDPConfig(depth=32, width=1280, heads=16),
}


def _known(kind: str, names: Any) -> str:
    return f"known {kind} presets: {', '.join(sorted(names))}"


def get_vlm_preset(name: str) -> VLMConfig:
    if name not in VLM_PRESETS:
        raise KeyError(f"unknown VLM preset {name!r}; {_known('VLM', VLM_PRESETS)}")
    return VLM_PRESETS[name]


def get_expert_preset(name: str, **overrides: Any) -> ScaleDPConfig:
    """An expert size preset by name, with fields replaced (e.g. `embodiments`, `cond_dim`)."""
    if name not in EXPERT_PRESETS:
        raise KeyError(f"unknown expert preset {name!r}; {_known('expert', EXPERT_PRESETS)}")
    return dataclasses.replace(EXPERT_PRESETS[name], **overrides)


def _policy(name: str, vlm: str, expert: str, embodiments: tuple[str, ...]) -> PolicyConfig:
    vlm_config = VLM_PRESETS[vlm]
    return PolicyConfig(
        name=name,
        vlm=vlm_config,
        expert=get_expert_preset(
            expert, cond_dim=vlm_hidden(vlm_config), embodiments=expert_heads(embodiments)
        ),
        diffusion=DiffusionConfig(),
    )


POLICY_PRESETS: dict[str, PolicyConfig] = {
    "tiny": _policy("tiny", "qwen2-vl-tiny", "scaledp-tiny", ("aloha", "sawyer")),
    "tiny-l": _policy("tiny-l", "qwen2-vl-tiny", "scaledp-tiny-l", ("aloha", "sawyer")),
    "tiny-h": _policy("tiny-h", "qwen2-vl-tiny", "scaledp-tiny-h", ("aloha", "sawyer")),
    "dexvla-2b": _policy("dexvla-2b", "qwen2-vl-2b", "scaledp-h", ("aloha",)),
    "dexvla-2b-l": _policy("dexvla-2b-l", "qwen2-vl-2b", "scaledp-l", ("aloha",)),
}


def get_policy_preset(name: str) -> PolicyConfig:
    """A full-policy preset by name, with an error that lists the known ones."""
    if name not in POLICY_PRESETS:
        raise KeyError(f"unknown policy preset {name!r}; {_known('policy', POLICY_PRESETS)}")
    return POLICY_PRESETS[name]


# --------------------------------------------------------------------------- parameter counts
def count_expert_parameters(config: ScaleDPConfig) -> int:
    """Parameters of a ScaleDP expert, built on `meta`."""
    with torch.device("meta"):
        return _num_parameters(ScaleDP(config))


def count_fusion_parameters(config: PolicyConfig) -> int:
    """Parameters of a policy's reasoning fusion, built on `meta`."""
    with torch.device("meta"):
        return _num_parameters(ReasoningFusion(vlm_hidden(config.vlm), config.expert.cond_dim))


def count_vlm_parameters(config: VLMConfig) -> int:
    """Parameters of a backbone preset, built on `meta`.

    A preset with pretrained weights is counted from its recorded architecture with Qwen2-VL's
    own vocabulary, so nothing is downloaded; the tiny preset uses its shipped tokenizer.
    """
    tokenizer = None if config.pretrained else load_tokenizer(config)
    with torch.device("meta"):
        model = Qwen2VL(qwen2vl_config(config, tokenizer))
    return _num_parameters(model)


def count_policy_parameters(config: PolicyConfig) -> int:
    """Parameters of a full policy: backbone + fusion + expert, counted on `meta`."""
    return (
        count_vlm_parameters(config.vlm)
        + count_fusion_parameters(config)
        + count_expert_parameters(config.expert)
    )


def _num_parameters(model: nn.Module) -> int:
    """Parameters of a module; tied parameters count once."""
    return sum(p.numel() for p in model.parameters())


def describe_presets() -> list[dict[str, Any]]:
    """Every preset with its parameter count (built on `meta`: nothing is allocated)."""
    rows: list[dict[str, Any]] = []
    for name, vlm in VLM_PRESETS.items():
        rows.append(
            {
                "name": name,
                "kind": "vlm",
                "parameters": count_vlm_parameters(vlm),
                "description": f"Qwen2-VL, {vlm.tokens_per_image} tokens per camera "
                f"at {vlm.image_size[0]}x{vlm.image_size[1]}",
            }
        )
    for name, expert in EXPERT_PRESETS.items():
        rows.append(
            {
                "name": name,
                "kind": "expert",
                "parameters": count_expert_parameters(expert),
                "description": f"ScaleDP depth {expert.depth} width {expert.width} "
                f"heads {expert.heads}, chunk {expert.chunk_size}",
            }
        )
    for name, policy in POLICY_PRESETS.items():
        rows.append(
            {
                "name": name,
                "kind": "policy",
                "parameters": count_policy_parameters(policy),
                "description": f"{policy.vlm.name} + ScaleDP({policy.expert.depth}x"
                f"{policy.expert.width}) for {', '.join(policy.embodiments)}",
            }
        )
    return rows
