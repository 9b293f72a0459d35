"""The one registry of named model presets: VLM backbones, ScaleDP experts and full policies.

Parameter counts are computed by building each model on the `meta` device, so listing the
billion-parameter presets allocates no weights and downloads nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from dexvla.policy.diffusion import DiffusionConfig
from dexvla.policy.modeling import (
    PolicyConfig,
    count_policy_parameters,
    count_vlm_parameters,
    expert_heads,
)
from dexvla.policy.scaledp import SCALEDP_PRESETS, ScaleDPConfig, count_parameters
from dexvla.policy.vlm import VLMConfig

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


def _policy(name: str, vlm: str, expert: str, embodiments: tuple[str, ...]) -> PolicyConfig:
    vlm_config = VLM_PRESETS[vlm]
    return PolicyConfig(
        name=name,
        vlm=vlm_config,
        expert=dataclasses.replace(
            SCALEDP_PRESETS[expert],
            cond_dim=vlm_hidden(vlm_config),
            embodiments=expert_heads(embodiments),
        ),
        diffusion=DiffusionConfig(),
    )


def vlm_hidden(config: VLMConfig) -> int:
    """The width of the backbone's hidden states (what the fusion pools)."""
    return int(config.text["hidden_size"])


POLICY_PRESETS: dict[str, PolicyConfig] = {
    "tiny": _policy("tiny", "qwen2-vl-tiny", "scaledp-tiny", ("aloha", "sawyer")),
    "tiny-l": _policy("tiny-l", "qwen2-vl-tiny", "scaledp-tiny-l", ("aloha", "sawyer")),
    "tiny-h": _policy("tiny-h", "qwen2-vl-tiny", "scaledp-tiny-h", ("aloha", "sawyer")),
    "dexvla-2b": _policy("dexvla-2b", "qwen2-vl-2b", "scaledp-h", ("aloha",)),
    "dexvla-2b-l": _policy("dexvla-2b-l", "qwen2-vl-2b", "scaledp-l", ("aloha",)),
}


def _known(kind: str, names: Any) -> str:
    return f"known {kind} presets: {', '.join(sorted(names))}"


def get_policy_preset(name: str) -> PolicyConfig:
    """A full-policy preset by name, with an error that lists the known ones."""
    if name not in POLICY_PRESETS:
        raise KeyError(f"unknown policy preset {name!r}; {_known('policy', POLICY_PRESETS)}")
    return POLICY_PRESETS[name]


def get_vlm_preset(name: str) -> VLMConfig:
    if name not in VLM_PRESETS:
        raise KeyError(f"unknown VLM preset {name!r}; {_known('VLM', VLM_PRESETS)}")
    return VLM_PRESETS[name]


def get_expert_preset(name: str) -> ScaleDPConfig:
    if name not in SCALEDP_PRESETS:
        raise KeyError(f"unknown expert preset {name!r}; {_known('expert', SCALEDP_PRESETS)}")
    return SCALEDP_PRESETS[name]


def describe_presets() -> list[dict[str, Any]]:
    """Every preset with its parameter count (built on `meta`: nothing is allocated)."""
    rows: list[dict[str, Any]] = []
    with torch.device("meta"):
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
        for name, expert in SCALEDP_PRESETS.items():
            rows.append(
                {
                    "name": name,
                    "kind": "expert",
                    "parameters": count_parameters(expert),
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
