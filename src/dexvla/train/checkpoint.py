"""Resumable, atomic, pickle-free training checkpoints.

A checkpoint is a directory `step-XXXXXX/` under the run's checkpoint root:

| file | content |
|---|---|
| `model.safetensors` | the full model state (trainable and frozen), tied tensors stored once |
| `ema.safetensors` | the EMA of the trainable weights (when EMA is on) |
| `optimizer.safetensors` + `optimizer.json` | optimiser state tensors + the rest (param groups) |
| `rng.safetensors` | each rank's torch (and CUDA) generator state |
| `trainer_state.json` | step, data position, scheduler state, python/numpy RNG states |
| `config.json` | the `TrainConfig` |
| `manifest.json` | written last: layout and every file's size; without it, incomplete |

That is the `full` layout (one process, DDP). An FSDP run writes the `sharded` layout instead:
`model-rank{r}`, `ema-rank{r}` and `optimizer-rank{r}.safetensors`, each rank's own pieces, and
`shards.json` (`dexvla.train.shards`): no rank gathers the whole model.

Rank 0 creates a staging directory (`dexvla.io.atomic_directory`) and tells the others its
path; every rank writes its files there; after a barrier rank 0 writes the rest, the manifest
last, and renames the directory into place, so a crash at any moment leaves the previous
checkpoints or a complete new one. On resume rank 0 alone reads the tensors and broadcasts
them, unless the same number of FSDP processes continue a sharded checkpoint: then each reads
its own shards. Nothing is ever unpickled (checkpoints of manifest format 1, before the
sharded layout, are full-layout checkpoints and load as they are).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
)

from dexvla.io import atomic_directory, atomic_write_json, no_space_errno, read_json
from dexvla.train.config import ConfigMismatchError, TrainConfig
from dexvla.train.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    broadcast_object,
    unwrap_model,
)
from dexvla.train.optim import EMA
from dexvla.train.shards import (
    SHARDS_FILE,
    has_tensors,
    is_sharded_model,
    load_from_rank0,
    load_own_shards,
    local_pieces,
    rank_file,
    read_full_tensors,
    read_spec,
)
from dexvla.train.tensors import flatten_optimizer_state, load_tensors, save_tensors

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
FORMATS = (1, 2)  # format 1: the full layout, before sharded checkpoints existed
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIM_TENSORS_FILE = "optimizer.safetensors"
OPTIM_JSON_FILE = "optimizer.json"
RNG_FILE = "rng.safetensors"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(root: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` lives under `root`."""
    return Path(root) / f"step-{step:06d}"


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, sort_keys=True)


# ---------------------------------------------------------------- random generators


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) generator states."""
    py = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of `capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------- save


@contextmanager
def explain_no_space(final: Path) -> Iterator[None]:
    """A save that failed for want of space: one line naming it and the checkpoint kept."""
    try:
        yield
    except Exception as error:
        if (code := no_space_errno(error)) is None:
            raise
        kept = latest_checkpoint(final.parent)
        raise OSError(
            code,
            f"no space left to save checkpoint {final} ({os.strerror(code)}); "
            f"{f'{kept} is intact' if kept else 'no earlier checkpoint'}: free space, --resume",
        ) from None


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    trainer_state: dict[str, Any],
    info: DistInfo,
    device: torch.device,
    ema: EMA | None = None,
    keep_last: int = 0,
    on_save: Callable[[Path], None] | None = None,
) -> Path:
    """Write the checkpoint of `step` atomically; every rank must call this (collectives).

    `model` may be plain, DDP- or FSDP-wrapped. Plain and DDP: full state dicts, written by
    rank 0. FSDP: every rank writes its shards. `trainer_state` is JSON-able (step, data
    position, ...). `on_save(tmp_dir)` lets the caller add files (e.g. normalisation
    statistics) before the manifest seals the directory. Returns the final directory.
    """
    sharded = is_sharded_model(model)
    if sharded:
        model_sd, optim_sd = get_state_dict(model, optimizer)  # this rank's DTensor pieces
    else:
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(model, optimizer, options=full)
    optim_tensors, optim_json = flatten_optimizer_state(optim_sd)
    states = {"model": model_sd, "optimizer": optim_tensors}
    if ema is not None:
        states["ema"] = ema.shadow if sharded else ema.state_dict()
    rng_states = all_gather_objects(capture_rng_state(device))
    root = Path(root)
    final = checkpoint_dir(root, step)

    def write_shards(tmp: Path) -> dict[str, Any]:
        spec: dict[str, Any] = {"world_size": info.world_size}
        for name, state in states.items():
            pieces, spec[name] = local_pieces(state, info.is_main)
            save_tensors(pieces, tmp / rank_file(name, info.rank))
        return spec

    if not info.is_main:
        staging = Path(broadcast_object(None))
        if sharded:
            write_shards(staging)
        barrier()  # every rank's files are in
        barrier()  # rank 0 has renamed the directory
        return final
    with explain_no_space(final), atomic_directory(final) as tmp:
        broadcast_object(str(tmp))
        if sharded:
            _write_json(tmp / SHARDS_FILE, write_shards(tmp))
        else:
            save_tensors(model_sd, tmp / MODEL_FILE)
            if ema is not None:
                save_tensors(states["ema"], tmp / EMA_FILE)
            save_tensors(optim_tensors, tmp / OPTIM_TENSORS_FILE)
        barrier()
        _write_json(tmp / OPTIM_JSON_FILE, optim_json)
        rng_tensors = {
            f"rank{r}.{k}": v
            for r, s in enumerate(rng_states)
            for k, v in s.items()
            if k in ("torch", "cuda")
        }
        save_tensors(rng_tensors, tmp / RNG_FILE)
        state = {
            **trainer_state,
            "step": step,
            "world_size": info.world_size,
            "scheduler": scheduler.state_dict(),
            "rng": [{"python": s["python"], "numpy": s["numpy"]} for s in rng_states],
        }
        _write_json(tmp / STATE_FILE, state)
        _write_json(tmp / CONFIG_FILE, config.to_dict())
        if on_save is not None:
            on_save(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        layout = "sharded" if sharded else "full"
        manifest = {"format": FORMAT_VERSION, "layout": layout, "step": step, "files": files}
        _write_json(tmp / MANIFEST_FILE, manifest)
    if keep_last > 0:
        prune_checkpoints(root, keep_last)
    barrier()
    return final


def prune_checkpoints(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints; returns what was removed."""
    complete = list_checkpoints(root)
    doomed = complete[:-keep_last] if keep_last > 0 else []
    for path in doomed:
        shutil.rmtree(path)
    return doomed


# ---------------------------------------------------------------- find and validate


def checkpoint_problem(path: str | Path) -> str | None:
    """Why `path` is not a complete checkpoint (None when it is)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return "no manifest (the write did not finish)"
    except (OSError, json.JSONDecodeError) as err:
        return f"unreadable manifest: {err}"
    if manifest.get("format") not in FORMATS:
        return f"unknown format {manifest.get('format')!r}"
    for name, size in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"missing {name}"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, manifest says {size}"
    return None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first; incomplete ones are skipped with a
    warning."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = sorted(
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (m := _STEP_DIR.match(p.name))
    )
    good = []
    for _, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            good.append(path)
        else:
            log.warning("ignoring incomplete checkpoint %s: %s", path, problem)
    return good


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    complete = list_checkpoints(root)
    return complete[-1] if complete else None


def _complete(path: Path) -> str:
    """The layout of the complete checkpoint at `path` (a ValueError when incomplete)."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"{path} is not a complete checkpoint: {problem}")
    return read_json(path / MANIFEST_FILE, "checkpoint manifest").get("layout", "full")


# ---------------------------------------------------------------- load


def read_train_config(path: str | Path) -> TrainConfig:
    """The `TrainConfig` a training checkpoint was written with."""
    return TrainConfig.from_dict(read_json(Path(path) / CONFIG_FILE, "training checkpoint"))


def check_resume_config(path: str | Path, config: TrainConfig) -> None:
    """Raise `ConfigMismatchError` when `config` cannot continue the run saved at `path`
    (and `ValueError` when `path` is not a complete checkpoint)."""
    _complete(Path(path))
    problems = config.resume_mismatches(read_train_config(path))
    if problems:
        raise ConfigMismatchError(
            f"cannot resume from {path}: the training config differs in "
            + "; ".join(problems)
            + ". Start a new output directory or use the checkpoint's settings."
        )


def load_model_weights(
    model: nn.Module, path: str | Path, ema: bool = False, assign: bool = False
) -> None:
    """Load a checkpoint's model (or EMA) weights into a plain module, strictly.

    `path` is a checkpoint directory (either layout) or a `.safetensors` file. With `ema=True`
    the EMA weights replace the trainable parameters after the full model state is loaded.
    `assign=True` takes the read tensors as the parameters (no copy: for a model built with
    its parameters on `meta`, whose ties are lost); names the file stores as one tensor are
    tied again. Missing or unexpected keys raise.
    """
    path = Path(path)
    state = load_tensors(path) if path.is_file() else read_full_tensors(path, "model")
    model.load_state_dict(state, strict=True, assign=assign)
    if assign:
        retie(model, state)
    if ema:
        source = path.parent if path.is_file() else path
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in read_full_tensors(source, "ema").items():
                params[name].copy_(value)


def retie(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Make the parameters loaded from one tensor of `state` (a tied weight, stored once) one
    parameter again."""
    first: dict[int, nn.Parameter] = {}
    for name, tensor in state.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        param = dict(module.named_parameters(recurse=False)).get(attr)
        if param is None:
            continue  # a buffer
        tied = first.setdefault(id(tensor), param)
        if tied is not param:
            setattr(module, attr, tied)


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    info: DistInfo,
    device: torch.device,
    ema: EMA | None = None,
) -> dict[str, Any]:
    """Restore model, optimiser, scheduler, EMA and this rank's RNG states from `path`.

    Only rank 0 reads the tensors and broadcasts them, except that the same number of FSDP
    processes continuing a sharded checkpoint read their own shards. Returns the trainer
    state (step, data position, ...). RNG states are restored only when the world size is
    unchanged; otherwise a warning says so.
    """
    path = Path(path)
    layout = _complete(path)
    optim_json = read_json(path / OPTIM_JSON_FILE, "checkpoint")
    saved = {fqn for group in optim_json["param_groups"] for fqn in group["params"]}
    trainable = {n for n, p in unwrap_model(model).named_parameters() if p.requires_grad}
    if saved != trainable:
        raise ValueError(
            f"{path} was trained with other trainable parameters: only in the checkpoint "
            f"{sorted(saved - trainable)[:5]}, only now {sorted(trainable - saved)[:5]}"
        )
    if ema is not None and not has_tensors(path, "ema"):
        raise ValueError(f"{path} has no EMA weights but the config asks for EMA")
    own_shards = (
        layout == "sharded"
        and is_sharded_model(model)
        and read_spec(path)["world_size"] == info.world_size
    )
    loader = load_own_shards if own_shards else load_from_rank0
    loader(path, model, optimizer, optim_json, info, device, ema)
    # Parameters that never received a gradient (e.g. other embodiments' output heads) have no
    # optimiser state; the parameter sets were checked to match above. The loader initialises
    # state for every parameter (step 1, zero moments): drop it where the checkpoint had none,
    # so that such a parameter's first real update is the same as in an uninterrupted run.
    params = dict(unwrap_model(model).named_parameters())
    for name in trainable - set(optim_json["state"]):
        optimizer.state.pop(params[name], None)
    state = read_json(path / STATE_FILE, "checkpoint")
    scheduler.load_state_dict(state.pop("scheduler"))
    rng = state.pop("rng")
    if state["world_size"] == info.world_size:
        tensors = load_tensors(path / RNG_FILE)
        rank_state = dict(rng[info.rank])
        for key in ("torch", "cuda"):
            if f"rank{info.rank}.{key}" in tensors:
                rank_state[key] = tensors[f"rank{info.rank}.{key}"]
        restore_rng_state(rank_state, device)
    else:
        log.warning(
            "checkpoint written by %d processes, resuming on %d: random generators are reseeded, "
            "so randomness inside the model will differ from an uninterrupted run",
            state["world_size"],
            info.world_size,
        )
    return state
