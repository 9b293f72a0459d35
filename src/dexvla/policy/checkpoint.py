"""Policy checkpoint files: their names, the one reader of `config.json`, writing, strict loading.

A checkpoint directory holds `config.json`, `model.safetensors`, `stats.json` and
`tokenizer/` (a stage-1 artefact: the first three). A policy's `config.json` is its
`PolicyConfig` plus the VLM's full architecture under `vlm_architecture`, so it can be rebuilt
without the hub. Weights load strictly: a missing, unexpected or mis-shaped tensor is an error
that lists them. Nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_model
from torch import nn
from transformers import PreTrainedTokenizerBase, Qwen2VLConfig

from dexvla.io import atomic_directory, atomic_write_json, one_line, read_json
from dexvla.policy.configuration import PolicyConfig
from dexvla.stats import DatasetStats

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATS_NAME = "stats.json"
TOKENIZER_DIR = "tokenizer"
VLM_ARCHITECTURE = "vlm_architecture"
POLICY_FILES = (CONFIG_NAME, WEIGHTS_NAME, STATS_NAME)


@dataclass
class PolicyCheckpoint:
    """A policy checkpoint directory, read: its config, VLM architecture and statistics.

    The weights and the tokenizer are left where they are (`weights_path`, `tokenizer_dir`).
    """

    directory: Path
    config: PolicyConfig
    vlm_architecture: Qwen2VLConfig
    stats: DatasetStats

    @property
    def weights_path(self) -> Path:
        return self.directory / WEIGHTS_NAME

    @property
    def tokenizer_dir(self) -> Path:
        return self.directory / TOKENIZER_DIR


def write_policy_checkpoint(
    directory: str | Path,
    config: PolicyConfig,
    model: nn.Module,
    vlm_architecture: Qwen2VLConfig,
    stats: DatasetStats,
    tokenizer: PreTrainedTokenizerBase,
) -> Path:
    """Write config.json, model.safetensors, stats.json and the tokenizer, atomically.

    Everything goes into a staging directory that replaces `directory` only once complete, so
    an interrupted save never leaves a half-written checkpoint behind.
    """
    directory = Path(directory)
    with atomic_directory(directory) as staging:
        atomic_write_json(
            staging / CONFIG_NAME,
            {**config.to_dict(), VLM_ARCHITECTURE: vlm_architecture.to_dict()},
        )
        save_model(model, str(staging / WEIGHTS_NAME))
        stats.save(staging / STATS_NAME)
        tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
    return directory


def read_policy_checkpoint(directory: str | Path) -> PolicyCheckpoint:
    """A `write_policy_checkpoint` directory's config, VLM architecture and statistics.

    Errors name the directory: a missing file, a config.json without the VLM architecture
    (e.g. a stage-1 artefact), or a malformed file.
    """
    directory = Path(directory)
    for name in POLICY_FILES:
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory} has no {name}")
    raw = read_checkpoint_config(directory)
    if VLM_ARCHITECTURE not in raw:
        raise ValueError(
            f"checkpoint {directory} is not a policy checkpoint: its {CONFIG_NAME} has no "
            f"{VLM_ARCHITECTURE!r} (kind {raw.get('kind')!r})"
        )
    architecture = Qwen2VLConfig.from_dict(raw.pop(VLM_ARCHITECTURE))
    config = PolicyConfig.from_dict(raw)
    stats = DatasetStats.load(directory / STATS_NAME)
    return PolicyCheckpoint(directory, config, architecture, stats)


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """The `config.json` of a checkpoint directory; errors name the directory and the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint {directory} is not a directory")
    config = read_json(directory / CONFIG_NAME, f"checkpoint {directory}:")
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {directory}: {CONFIG_NAME} is not a JSON object")
    return config


def load_state_dict_strict(model: nn.Module, path: Path) -> None:
    """Load safetensors weights; any missing or unexpected key is an error that lists them.

    Tied parameters (Qwen's LM head shares the embedding) are stored once; a missing key is
    accepted only when it is tied to a key that is present.
    """
    try:
        state = load_file(str(path))
    except Exception as error:
        raise ValueError(f"cannot read weights {path}: {one_line(error)}") from None
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = [
        key
        for key, group in tie_groups(model).items()
        if key not in state and not any(alias in state for alias in group)
    ]
    check_state_dict(f"checkpoint {path}", state, expected, missing, unexpected)
    model.load_state_dict(state, strict=False)


def check_state_dict(
    subject: str,
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    prefix: str = "",
) -> None:
    """Refuse weights with missing or unexpected keys, then with tensors of the wrong shape.

    The error names `subject` and lists up to 20 keys of each kind; `prefix` is prepended to
    the names of `state` in the shape errors.
    """

    def listed(keys: list[str]) -> str:
        keys = sorted(keys)
        return f"{keys[:20]}{' ...' if len(keys) > 20 else ''}"

    if missing or unexpected:
        raise ValueError(
            f"{subject} does not match the model: missing keys {listed(missing)}, "
            f"unexpected keys {listed(unexpected)}"
        )
    mismatched = [
        f"{prefix}{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in state.items()
        if value.shape != expected[key].shape
    ]
    if mismatched:
        raise ValueError(f"{subject} has tensors of the wrong shape: {mismatched[:20]}")


def tie_groups(model: nn.Module) -> dict[str, list[str]]:
    """Each state-dict name with every name sharing its tensor (tied weights are saved once)."""
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(tensor), []).append(name)
    return {name: group for group in by_tensor.values() for name in group}
