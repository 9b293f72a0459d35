"""Read the authors' released stage-1 experts (ScaleDP-H / ScaleDP-L) into this project's ScaleDP.

A released file is a `.ckpt` whose `['nets']['nets']` is a dict of tensors, or a `.safetensors`
of that same dict. Its expert keys start `noise_pred_net.` (optionally under `policy.`); every
other key belongs to the stage-1 policy's image backbones and is dropped. The architecture is
read from the tensors' shapes (attention heads cannot be: `heads`, default 16 as released),
and the weights map by name onto a ScaleDP in the released layout
(`ScaleDPConfig(layout="released")`):

    x_embedder.*          -> action_in.<embodiment>.*
    final_layer.linear.*  -> action_out.<embodiment>.*
    everything else       -> the same name (pos_embed, t_embedder.mlp, combine, cond_obs_emb,
                             blocks.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1},
                             final_layer.adaLN_modulation.1)

A missing, unexpected or mis-shaped expert tensor is an error naming it. `.ckpt` files are
read with `torch.load(weights_only=True)` only: a file that needs code to unpickle is refused.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from dexvla.io import one_line
from dexvla.policy.checkpoint import check_state_dict
from dexvla.policy.scaledp import ScaleDP, ScaleDPConfig

log = logging.getLogger(__name__)

RELEASED_PREFIX = "noise_pred_net."
POLICY_PREFIX = "policy."
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
# Released name prefix -> this project's, "{e}" the embodiment that takes the released head.
RENAMES = {"x_embedder.": "action_in.{e}.", "final_layer.linear.": "action_out.{e}."}
# The tensors the architecture is read from.
SHAPE_KEYS = (
    "x_embedder.weight",
    "pos_embed",
    "combine.0.weight",
    "combine.4.weight",
    "t_embedder.mlp.0.weight",
    "blocks.0.mlp.fc1.weight",
)
BLOCK = re.compile(r"blocks\.(\d+)\.")


def read_released_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensor dict of a released file: `['nets']['nets']` of a `.ckpt`, or a `.safetensors`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"released expert {path}: no such file")
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            return load_file(str(path))
        except Exception as error:
            raise ValueError(f"cannot read {path} as safetensors: {one_line(error)}") from None
    if path.suffix not in TORCH_SUFFIXES:
        raise ValueError(
            f"released expert {path}: expected a {'/'.join(TORCH_SUFFIXES)} or "
            f"{SAFETENSORS_SUFFIX} file, got suffix {path.suffix!r}"
        )
    try:  # zip-format files are memory-mapped: a 4 GB expert is not read twice
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error)
        raise ValueError(
            f"refusing {path}: it holds objects that need code to unpickle, and this project "
            f"only reads tensors (torch.load weights_only=True): {reason}. Where you trust the "
            f"file, save its ['nets']['nets'] tensors as {SAFETENSORS_SUFFIX} and pass that"
        ) from None
    except Exception as error:
        raise ValueError(f"cannot read {path} as a torch checkpoint: {one_line(error)}") from None
    nets = raw.get("nets") if isinstance(raw, dict) else None
    state = nets.get("nets") if isinstance(nets, dict) else None
    if not isinstance(state, dict):
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path} has no ['nets']['nets'] dict of tensors (top level: {found})")
    others = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if others:
        raise ValueError(f"{path}: ['nets']['nets'] holds non-tensor entries {others[:20]}")
    return state


def split_released_state(
    state: dict[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(expert tensors under their released names, without `noise_pred_net.`; dropped keys).

    The `policy.` prefix is optional; keys outside `noise_pred_net.` are the stage-1 image
    backbones, dropped as the authors' stage 2 drops them.
    """
    expert: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        name = key.removeprefix(POLICY_PREFIX)
        if name.startswith(RELEASED_PREFIX):
            expert[name[len(RELEASED_PREFIX) :]] = value
        else:
            dropped.append(key)
    if not expert:
        raise ValueError(
            f"{source} holds no expert tensors ({RELEASED_PREFIX}*); its keys start with "
            f"{sorted({k.split('.')[0] for k in state})[:20]}"
        )
    return expert, dropped


def released_config(
    state: dict[str, torch.Tensor], *, heads: int = 16, embodiment: str = "aloha"
) -> ScaleDPConfig:
    """The released-layout ScaleDPConfig the expert tensors' shapes say (one head: `embodiment`)."""
    missing = [RELEASED_PREFIX + key for key in SHAPE_KEYS if key not in state]
    if missing:
        raise ValueError(f"released expert is missing keys {missing}")
    width, action_dim = state["x_embedder.weight"].shape
    horizon = state["pos_embed"].shape[1]
    combine_dim, joined = state["combine.0.weight"].shape
    cond_dim = state["combine.4.weight"].shape[0]
    depth = 1 + max(int(m.group(1)) for key in state if (m := BLOCK.match(key)))
    mlp_dim = state["blocks.0.mlp.fc1.weight"].shape[0]
    if joined <= cond_dim:
        raise ValueError(
            f"released expert: {RELEASED_PREFIX}combine.0.weight reads {joined} inputs, not "
            f"cond_dim {cond_dim} + a state width"
        )
    if width % heads:
        raise ValueError(f"released expert width {width} is not divisible by heads={heads}")
    return ScaleDPConfig(
        depth=depth,
        width=int(width),
        heads=heads,
        mlp_ratio=mlp_dim / width,
        cond_dim=int(cond_dim),
        chunk_size=int(horizon),
        embodiments={embodiment: (int(action_dim), int(joined - cond_dim))},
        state_embed_dim=int(joined - cond_dim),
        time_freq_dim=int(state["t_embedder.mlp.0.weight"].shape[1]),
        layout="released",
        combine_dim=int(combine_dim),
    )


def project_name(name: str, embodiment: str) -> str:
    """A released expert name -> this project's ScaleDP state-dict name."""
    for old, new in RENAMES.items():
        if name.startswith(old):
            return new.format(e=embodiment) + name[len(old) :]
    return name


def released_name(name: str, embodiment: str) -> str:
    """Inverse of `project_name`, with the file's prefix (for error messages)."""
    for old, new in RENAMES.items():
        if name.startswith(new.format(e=embodiment)):
            name = old + name[len(new.format(e=embodiment)) :]
            break
    return RELEASED_PREFIX + name


def map_released_state(
    state: dict[str, torch.Tensor], expert: ScaleDP, embodiment: str
) -> dict[str, torch.Tensor]:
    """Released expert tensors -> `expert`'s state dict (fp32 or the expert's dtype), strictly:
    an unexpected, missing or mis-shaped tensor is a ValueError naming its released key."""
    target = expert.state_dict()
    expected = {released_name(k, embodiment): v for k, v in target.items()}  # released names
    given = {RELEASED_PREFIX + k: v for k, v in state.items()}
    missing, unexpected = list(set(expected) - set(given)), list(set(given) - set(expected))
    check_state_dict("released expert", given, expected, missing, unexpected)
    names = {k: project_name(k, embodiment) for k in state}
    return {names[k]: v.to(target[names[k]].dtype).contiguous() for k, v in state.items()}


def read_released_expert(
    path: str | Path, *, heads: int = 16, embodiment: str = "aloha"
) -> tuple[ScaleDPConfig, dict[str, torch.Tensor], list[str]]:
    """(config, this project's expert state dict, dropped backbone keys) of a released file."""
    expert_state, dropped = split_released_state(read_released_file(path), str(path))
    config = released_config(expert_state, heads=heads, embodiment=embodiment)
    with torch.device("meta"):
        skeleton = ScaleDP(config)
    mapped = map_released_state(expert_state, skeleton, embodiment)
    log.info(
        "released expert %s: depth %d width %d heads %d, chunk %d, action %d, state %d, cond %d;"
        " dropped %d backbone tensors",
        path, config.depth, config.width, config.heads, config.chunk_size,
        *config.embodiments[embodiment], config.cond_dim, len(dropped),
    )  # fmt: skip
    return config, mapped, dropped


def load_released_expert(
    path: str | Path, *, heads: int = 16, embodiment: str = "aloha"
) -> ScaleDP:
    """The released expert in `path` as this project's ScaleDP (released layout, fp32, eval).

    `expert(noisy, timesteps, cond, state, embodiment)` equals the released
    `model_forward(noisy, timesteps, global_cond=cond, states=state)` on the same inputs.
    """
    config, mapped, _ = read_released_expert(path, heads=heads, embodiment=embodiment)
    with torch.device("meta"):
        expert = ScaleDP(config)
    expert.load_state_dict(mapped, strict=True, assign=True)
    return expert.eval()
