"""Convert a released stage-1 expert into this project's stage-1 artefact, for stage 2's --init.

The artefact holds the whole released expert, mapped to this project's names, and records its
architecture (`ScaleDPConfig`, released layout) in config.json, so `dexvla train --stage 2
--init DIR` builds its expert from it. What stage 2 keeps and re-initialises follows the
authors' stage 2, which loads everything under `noise_pred_net.` except `cond_obs_emb`:

- kept: pos_embed, t_embedder, combine, every block, final_layer, and the released head as the
  named embodiment's action_in / action_out;
- re-initialised: cond_obs_emb (it maps the stage-1 condition, from other encoders, into the
  trunk), named under the artefact's `reinitialise`;
- fresh: the heads of any other embodiment stage 2 serves (`fresh_heads`), their states
  projected by their own `state_in` Linear to the state width `combine` reads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from dexvla.embodiments import get_embodiment
from dexvla.io import atomic_directory, atomic_write_json
from dexvla.policy.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from dexvla.released.expert import read_released_expert
from dexvla.train.stage1 import EXPERT_PREFIX, FRESH_HEADS_KEY, REINITIALISE_KEY, STAGE1_KIND

# What the authors' stage 2 leaves out of the released expert it loads.
REINITIALISED = ("cond_obs_emb",)
SOURCE_KEY = "released_source"


def sha256(path: Path) -> str:
    """The file's SHA-256, read in 16 MiB pieces (a ScaleDP-H file is ~4 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(1 << 24):
            digest.update(piece)
    return digest.hexdigest()


def convert_released_expert(
    src: str | Path, out: str | Path, *, heads: int = 16, embodiment: str = "aloha"
) -> Path:
    """Write `out` (config.json + model.safetensors), a stage-1 artefact of the released expert
    in `src`; its head becomes `embodiment`'s, whose registered sizes must match the file's."""
    src, out = Path(src), Path(out)
    config, state, dropped = read_released_expert(src, heads=heads, embodiment=embodiment)
    spec = get_embodiment(embodiment)
    if config.embodiments[embodiment] != (spec.action_dim, spec.state_dim):
        raise ValueError(
            f"{src}: the released expert's (action, state) sizes {config.embodiments[embodiment]}"
            f" do not match embodiment {embodiment!r}'s {(spec.action_dim, spec.state_dim)}; "
            "pass --embodiment for the robot it was trained on"
        )
    record: dict[str, Any] = {
        "kind": STAGE1_KIND,
        "expert": config.to_dict(),
        REINITIALISE_KEY: list(REINITIALISED),
        FRESH_HEADS_KEY: True,
        SOURCE_KEY: {
            "file": src.name,
            "sha256": sha256(src),
            "embodiment": embodiment,
            "dropped_backbone_tensors": len(dropped),
        },
    }
    with atomic_directory(out) as staging:
        atomic_write_json(staging / CONFIG_NAME, record)
        save_file({EXPERT_PREFIX + k: v for k, v in state.items()}, str(staging / WEIGHTS_NAME))
    return out
