"""Tensors to and from safetensors files for checkpoints: tied views stored once, optimiser
state split into tensors and a JSON skeleton (so that nothing needs pickling).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dexvla.io import atomic_write

# Marks a tensor's place in the JSON skeleton of an optimiser state: {TENSOR_REF: key}.
TENSOR_REF = "__tensor__"


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors to safetensors, storing tensors that are the same view only once.

    Tied weights (e.g. input embeddings and LM head) appear under several names in a state
    dict; one copy is stored and the other names are recorded in the `aliases` metadata.
    Partially overlapping views are copied apart.
    """
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple[Any, ...], str] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        t = tensor.detach()
        if t.numel() == 0:
            unique[name] = t.contiguous()
            continue
        ptr = t.untyped_storage().data_ptr()
        view = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        unique[name] = t.contiguous().clone() if ptr in storages else t.contiguous()
        storages.add(ptr)
    meta = {"format": "pt", **(metadata or {})}
    if aliases:
        meta["aliases"] = json.dumps(aliases, sort_keys=True)
    atomic_write(Path(path), lambda temp: save_file(unique, str(temp), metadata=meta))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `save_tensors` file, restoring aliased names."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path))
    for alias, target in json.loads(meta.get("aliases", "{}")).items():
        tensors[alias] = tensors[target]
    return tensors


def flatten_optimizer_state(
    state: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an FQN-keyed optimiser state dict into tensors and a JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton: dict[str, Any] = {}
    for fqn, entry in state.get("state", {}).items():
        out: dict[str, Any] = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                ref = f"{fqn}::{key}"
                tensors[ref] = value.detach().cpu().contiguous()
                out[key] = {TENSOR_REF: ref}
            else:
                out[key] = value
        skeleton[fqn] = out
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
        for g in state.get("param_groups", [])
    ]
    return tensors, {"state": skeleton, "param_groups": groups}


def unflatten_optimizer_state(
    tensors: dict[str, torch.Tensor], data: dict[str, Any]
) -> dict[str, Any]:
    """Inverse of `flatten_optimizer_state` (lists back to tuples, except parameter lists)."""
    state = {
        fqn: {
            k: tensors[v[TENSOR_REF]] if isinstance(v, dict) and TENSOR_REF in v else v
            for k, v in entry.items()
        }
        for fqn, entry in data["state"].items()
    }
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in data["param_groups"]
    ]
    return {"state": state, "param_groups": groups}
