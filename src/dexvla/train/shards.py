"""The sharded checkpoint layout: each rank's pieces of FSDP2 (DTensor) state, pickle-free.

`torch.distributed.checkpoint` would do this, but its `.metadata` file is a pickle
(`FileSystemReader.read_metadata` calls `pickle.load`), and loading never unpickles here. So
each rank writes its local pieces to `<name>-rank{r}.safetensors` and rank 0 writes the plain
(replicated) tensors once, in its own file; `shards.json` says for every key its global shape,
dtype and whether it is sharded. FSDP2 shards dim 0 in rank order (`torch.chunk`), so the
pieces concatenated along dim 0 are the full tensor: a checkpoint resumes on the same number of
processes shard by shard, or is assembled whole (another world size, DDP, one process, export).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor, Replicate, Shard

from dexvla.io import read_json
from dexvla.train.distributed import DistInfo, broadcast_tensors
from dexvla.train.optim import EMA
from dexvla.train.tensors import load_tensors, unflatten_optimizer_state

SHARDS_FILE = "shards.json"


def rank_file(name: str, rank: int) -> str:
    """`model` -> `model-rank3.safetensors`."""
    return f"{name}-rank{rank}.safetensors"


def is_sharded(tensor: torch.Tensor) -> bool:
    """A DTensor sharded along dim 0 of a 1-D mesh (FSDP2's layout); other DTensor layouts are
    refused, a replicated DTensor counts as plain."""
    if not isinstance(tensor, DTensor):
        return False
    placements = tuple(tensor.placements)
    if placements == (Shard(0),):
        return True
    if placements == (Replicate(),):
        return False
    raise ValueError(f"cannot checkpoint a DTensor placed {placements}: only FSDP2's Shard(0)")


def is_sharded_model(model: nn.Module) -> bool:
    """Whether FSDP2 shards some of `model`'s parameters (its checkpoints are sharded)."""
    return any(is_sharded(p) for p in model.parameters())


def local_pieces(
    state: Mapping[str, torch.Tensor], main: bool
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """This rank's tensors to write (its shards; the plain tensors too on rank 0) and the spec
    of every key (global shape, dtype, sharded)."""
    pieces: dict[str, torch.Tensor] = {}
    spec: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        sharded = is_sharded(value)
        spec[key] = {
            "shape": list(value.shape),
            "dtype": str(value.dtype).removeprefix("torch."),
            "sharded": sharded,
        }
        if sharded:
            pieces[key] = value.to_local().detach().cpu()
        elif main:
            full = value.full_tensor() if isinstance(value, DTensor) else value
            pieces[key] = full.detach().cpu()
    return pieces, spec


def read_spec(path: Path) -> dict[str, Any]:
    """The `shards.json` of a sharded checkpoint."""
    return read_json(Path(path) / SHARDS_FILE, "sharded checkpoint")


def assemble(
    ranks: list[dict[str, torch.Tensor]], spec: Mapping[str, Mapping[str, Any]], what: str
) -> dict[str, torch.Tensor]:
    """Full tensors from every rank's pieces (`ranks[r]` read from rank r's file)."""
    out: dict[str, torch.Tensor] = {}
    for key, entry in spec.items():
        if entry["sharded"]:
            full = torch.cat([pieces[key] for pieces in ranks], dim=0)
        else:
            full = ranks[0][key]
        if list(full.shape) != list(entry["shape"]):
            raise ValueError(
                f"{what}: the shards of {key} make {list(full.shape)}, not {entry['shape']}"
            )
        out[key] = full
    return out


def like(local: torch.Tensor, live: DTensor) -> DTensor:
    """`local` (this rank's piece) as a DTensor sharded like `live`."""
    return DTensor.from_local(
        local.to(live.device, live.dtype),
        live.device_mesh,
        live.placements,
        run_check=False,
        shape=live.shape,
        stride=live.stride(),
    )


def has_tensors(path: str | Path, name: str) -> bool:
    """Whether the checkpoint at `path` holds the tensors `name` (`model`, `ema`, ...)."""
    path = Path(path)
    if (path / f"{name}.safetensors").is_file():
        return True
    return (path / SHARDS_FILE).is_file() and name in read_spec(path)


def read_full_tensors(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    """The full tensors `name` of a checkpoint of either layout (shards are assembled)."""
    path = Path(path)
    if (path / f"{name}.safetensors").is_file():
        return load_tensors(path / f"{name}.safetensors")
    spec = read_spec(path)
    if name not in spec:
        raise FileNotFoundError(f"checkpoint {path} holds no {name} tensors")
    ranks = [load_tensors(path / rank_file(name, r)) for r in range(spec["world_size"])]
    return assemble(ranks, spec[name], f"checkpoint {path}")


def load_from_rank0(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    optim_json: dict[str, Any],
    info: DistInfo,
    device: torch.device,
    ema: EMA | None,
) -> None:
    """Full tensors read by rank 0 alone (shards assembled), broadcast to every rank."""
    main = info.is_main
    model_sd = read_full_tensors(path, "model") if main else {}
    optim_tensors = read_full_tensors(path, "optimizer") if main else {}
    skeleton = optim_json if main else {"state": {}, "param_groups": optim_json["param_groups"]}
    optim_sd = unflatten_optimizer_state(optim_tensors, skeleton)
    options = StateDictOptions(full_state_dict=True, strict=True, broadcast_from_rank0=info.enabled)
    set_model_state_dict(model, model_sd, options=options)
    del model_sd
    options = StateDictOptions(
        full_state_dict=True, strict=False, broadcast_from_rank0=info.enabled
    )
    set_optimizer_state_dict(model, optimizer, optim_sd, options=options)
    if ema is not None:
        ema.load_state_dict(
            broadcast_tensors(read_full_tensors(path, "ema") if main else None, device)
        )


def load_own_shards(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    optim_json: dict[str, Any],
    info: DistInfo,
    device: torch.device,
    ema: EMA | None,
) -> None:
    """Each rank reads its own shards; rank 0 reads and broadcasts the plain tensors."""
    spec = read_spec(path)

    def own(name: str, live: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pieces = load_tensors(path / rank_file(name, info.rank))
        entries = spec[name]
        mine = (
            {k: pieces[k] for k, e in entries.items() if not e["sharded"]} if info.is_main else None
        )
        # On the CPU like a fresh load: optimiser steps must stay there (AdamW, not capturable).
        plain = {k: v.cpu() for k, v in broadcast_tensors(mine, device).items()}
        return {
            key: like(pieces[key], live[key]) if entry["sharded"] else plain[key]
            for key, entry in entries.items()
        }

    live = get_model_state_dict(model)
    set_model_state_dict(model, own("model", live), options=StateDictOptions(strict=True))
    refs = {ref: live[ref.split("::")[0]] for ref in spec["optimizer"]}
    optim_sd = unflatten_optimizer_state(own("optimizer", refs), optim_json)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=StateDictOptions(strict=False))
    if ema is not None:
        ema.load_state_dict(own("ema", ema.shadow))
