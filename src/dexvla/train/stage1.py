"""Stage 1: the ScaleDP expert alone, pre-trained across embodiments, no VLM forward.

The paper conditions stage 1 on a frozen vision encoder and a frozen language encoder. Here
both come from the policy preset's own Qwen2-VL, so stage 1 needs no extra download and sees
the same pixels and tokens as stage 2:

- vision: the Qwen2-VL vision tower (patch embedding, ViT blocks, 2x2 patch merger), frozen;
  its merged patch features are mean-pooled per camera, then averaged over the cameras;
- language: the Qwen2-VL token embedding of the instruction, frozen, mean-pooled.

A trainable condition projection `stage1_proj` (Linear -> LayerNorm -> GELU -> Linear, the
paper's projector shape) maps `concat(vision, language)` to the expert's `cond_dim`. Averaging
over cameras makes one projection serve every embodiment whatever its camera count. Stage 2
keeps `expert.*` and drops `stage1_proj.*` (see `load_stage1_expert`).

A stage-1 artefact is `config.json` (kind "dexvla-stage1", the expert's architecture under
`policy.expert` or `expert`) and `model.safetensors`; a converted released expert
(`dexvla.released`) also names under `reinitialise` the expert modules stage 2 starts fresh, and
sets `fresh_heads` so heads of embodiments it lacks start fresh instead of being an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dexvla.embodiments import get_embodiment
from dexvla.io import atomic_directory, atomic_write_json
from dexvla.policy.checkpoint import (
    CONFIG_NAME,
    STATS_NAME,
    WEIGHTS_NAME,
    check_state_dict,
    read_checkpoint_config,
)
from dexvla.policy.configuration import POSITION_CONDITIONS, PolicyConfig
from dexvla.policy.diffusion import ActionDiffusion
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.policy.processor import object_positions, resize_images
from dexvla.policy.scaledp import ScaleDP, ScaleDPConfig
from dexvla.policy.vlm import ImageEncoder, VLMConfig, build_vlm, load_tokenizer, masked_mean
from dexvla.schema import (
    ACTION,
    ACTION_IS_PAD,
    EMBODIMENT,
    ENV_STATE,
    STATE,
    TASK,
    image_key,
)
from dexvla.stats import DatasetStats

log = logging.getLogger(__name__)

STAGE1_KIND = "dexvla-stage1"
EXPERT_PREFIX = "expert."
PROJ_PREFIX = "stage1_proj."
# The object-position embedding of a stage 1 whose condition takes positions; stage 2 keeps it.
ENV_PREFIX = "env_embed."
# Random-weight backbones (the tiny preset) are built under this seed, so every stage-1 run of
# a preset sees the same frozen encoders.
ENCODER_SEED = 0
# Per-embodiment expert parts: a stage-1 expert's heads for embodiments a stage-2 policy does
# not serve are dropped by these names.
HEAD_MODULES = ("action_in", "state_in", "action_out")
# config.json keys of an artefact: expert modules stage 2 re-initialises; fresh missing heads.
REINITIALISE_KEY = "reinitialise"
FRESH_HEADS_KEY = "fresh_heads"


class Stage1Encoder(nn.Module):
    """Frozen observation features: Qwen2-VL vision tower + token embedding of one preset."""

    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        self.tokenizer = load_tokenizer(config)
        with torch.random.fork_rng():
            torch.manual_seed(ENCODER_SEED)
            vlm = build_vlm(config, self.tokenizer)
        self.visual = vlm.model.visual
        self.embed_tokens = vlm.get_input_embeddings()
        self.vision_dim = int(vlm.config.vision_config.hidden_size)
        self.text_dim = int(vlm.config.text_config.hidden_size)
        self.image_size = tuple(config.image_size)
        self.images = ImageEncoder()
        self.requires_grad_(False)
        self.eval()

    @property
    def out_dim(self) -> int:
        return self.vision_dim + self.text_dim

    def train(self, mode: bool = True) -> Stage1Encoder:
        """Always in eval mode: the encoders are frozen."""
        return super().train(False)

    def _text(self, tasks: list[str], device: torch.device) -> torch.Tensor:
        rows = [self.tokenizer.encode(t, add_special_tokens=False) or [0] for t in tasks]
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return masked_mean(self.embed_tokens(ids.to(device)), mask.to(device)).float()

    @torch.no_grad()
    def forward(self, batch: dict[str, Any], embodiment: str) -> torch.Tensor:
        """(B, vision_dim + text_dim): camera-averaged image features ++ instruction features."""
        cameras = get_embodiment(embodiment).cameras
        device = self.embed_tokens.weight.device
        resized = [resize_images(batch[image_key(cam)], self.image_size) for cam in cameras]
        pixel_values, grid = self.images(resized)
        merged = self.visual(
            pixel_values.to(device, self.embed_tokens.weight.dtype), grid_thw=grid.to(device)
        ).pooler_output  # (B * n_cams * tokens, vision_dim), sample-major
        size = len(batch[TASK])
        per_camera = merged.view(size, len(cameras), -1, merged.shape[-1]).mean(2)
        vision = per_camera.mean(1).float()  # (B, vision_dim)
        return torch.cat([vision, self._text(list(batch[TASK]), device)], dim=-1)


class Stage1Policy(nn.Module):
    """Frozen encoders -> `stage1_proj` -> ScaleDP with one head per embodiment."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Stage1Encoder(config.vlm)
        cond = config.expert.cond_dim
        self.stage1_proj = nn.Sequential(
            nn.Linear(self.encoder.out_dim, cond),
            nn.LayerNorm(cond),
            nn.GELU(),
            nn.Linear(cond, cond),
        )
        self.expert = ScaleDP(config.expert)
        positions = config.env_state in POSITION_CONDITIONS
        self.env_embed = nn.Linear(config.env_state_dim, cond) if positions else None
        self.diffusion = ActionDiffusion(config.diffusion)

    def condition(self, batch: dict[str, Any], embodiment: str) -> torch.Tensor:
        """(B, cond_dim): the projected frozen features, plus the embedded object positions
        where the policy takes them and the batch records them (simulated ALOHA)."""
        dtype = self.expert.pos_embed.dtype
        device = self.expert.pos_embed.device
        cond = self.stage1_proj(self.encoder(batch, embodiment).to(device, dtype))
        if self.env_embed is not None and ENV_STATE in batch:
            cond = cond + self.env_embed(object_positions(batch, self.config, device).to(dtype))
        return cond

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Diffusion loss on a one-embodiment batch (the windows' layout), averaged over the
        policy's `noise_samples` draws per observation (the encoders run once)."""
        names = set(batch[EMBODIMENT])
        if len(names) != 1:
            raise ValueError(f"a batch must hold one embodiment, got {sorted(names)}")
        embodiment = names.pop()
        if embodiment not in self.config.expert.embodiments:
            raise ValueError(
                f"embodiment {embodiment!r} has no expert head; heads: "
                f"{sorted(self.config.expert.embodiments)}"
            )
        dtype = self.expert.pos_embed.dtype
        device = self.expert.pos_embed.device
        k = self.config.noise_samples
        cond = self.condition(batch, embodiment).repeat(k, 1)  # (K*B, C)
        state = batch[STATE].to(device, dtype).repeat(k, 1)
        loss = self.diffusion.loss(
            self.expert.denoiser(cond, state, embodiment),
            batch[ACTION].to(device, torch.float32).repeat(k, 1, 1),
            batch[ACTION_IS_PAD].to(device).repeat(k, 1),
        )
        value = loss.detach()  # a tensor: the step never waits for the device
        return loss, {"loss": value, "action_loss": value}

    def gradient_checkpointing_enable(self) -> None:
        """Recompute ScaleDP blocks in the backward pass (the encoders run without grad)."""
        self.expert.gradient_checkpointing = True

    def compile_blocks(self) -> None:
        """`torch.compile` ScaleDP's trunk in training steps (the encoders are frozen)."""
        self.expert.compile_steps(training=True)

    def fsdp_wrap_modules(self) -> list[nn.Module]:
        return list(self.expert.blocks)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights a stage-1 artefact holds: `expert.*`, `stage1_proj.*` and, where the
        condition takes object positions, `env_embed.*`."""
        return {
            k: v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
            if k.startswith((EXPERT_PREFIX, PROJ_PREFIX, ENV_PREFIX))
        }

    def save_final(self, directory: Path, stats: DatasetStats, stage: dict[str, Any]) -> Path:
        """Write config.json, model.safetensors (expert + projection), stats.json atomically."""
        directory = Path(directory)
        with atomic_directory(directory) as staging:
            config = {
                "kind": STAGE1_KIND,
                "policy": self.config.to_dict(),
                "encoder": {
                    "vision": f"{self.config.vlm.name} vision tower (frozen)",
                    "language": f"{self.config.vlm.name} token embedding (frozen)",
                    "pretrained": self.config.vlm.pretrained,
                    "seed": ENCODER_SEED,
                    "out_dim": self.encoder.out_dim,
                },
                "stage": stage,
            }
            atomic_write_json(staging / CONFIG_NAME, config)
            save_file(self.trainable_state(), str(staging / WEIGHTS_NAME))
            stats.save(staging / STATS_NAME)
        return directory


def read_stage1_config(directory: Path) -> dict[str, Any]:
    """A stage-1 artefact's config.json; errors say what is wrong with the directory."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"stage-1 checkpoint {directory} has no {name}")
    config = read_checkpoint_config(directory)
    if config.get("kind") != STAGE1_KIND:
        raise ValueError(
            f"{directory} is not a stage-1 checkpoint (config kind {config.get('kind')!r}); "
            "stage 2 --init takes the final/ directory of a `dexvla train --stage 1` run or "
            "of `dexvla convert-released-expert`"
        )
    return config


def stage1_expert_config(config: dict[str, Any], directory: Path) -> ScaleDPConfig:
    """The expert architecture a stage-1 artefact's config.json records."""
    expert = config.get("expert", config.get("policy", {}).get("expert"))
    if not isinstance(expert, dict):
        raise ValueError(f"stage-1 checkpoint {directory}: {CONFIG_NAME} records no expert")
    try:
        return ScaleDPConfig.from_dict(expert)
    except (TypeError, ValueError) as error:
        raise ValueError(f"stage-1 checkpoint {directory}: bad expert config: {error}") from None


def read_stage1(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A stage-1 artefact's config and weights; errors say what is wrong with the directory."""
    directory = Path(directory)
    config = read_stage1_config(directory)
    try:
        state = load_file(str(directory / WEIGHTS_NAME))
    except Exception as error:
        raise ValueError(f"cannot read {directory / WEIGHTS_NAME}: {error}") from None
    return config, state


def map_stage1_state(
    state: dict[str, torch.Tensor], expert: ScaleDP, fresh: Iterable[str] = ()
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Stage-1 weights -> the expert's state dict, by an explicit key mapping.

    `expert.<name>` maps to `<name>`; `stage1_proj.*` and the heads of embodiments `expert` has
    no head for are dropped by name. The expert modules named in `fresh` (e.g. "cond_obs_emb",
    "action_in.sawyer") keep `expert`'s own initialisation: the artefact's tensors for them
    are dropped. Any other key, a missing expert key or a shape mismatch is a ValueError
    listing the keys. Returns (expert state, dropped keys).
    """
    served = set(expert.config.embodiments)
    target = expert.state_dict()
    own = tuple(f"{module}." for module in fresh)
    mapped = {k: v for k, v in target.items() if k.startswith(own)}
    dropped: list[str] = []
    unexpected: list[str] = []
    for key, value in state.items():
        name = key.removeprefix(EXPERT_PREFIX)
        if key.startswith(PROJ_PREFIX) or (key.startswith(EXPERT_PREFIX) and name.startswith(own)):
            dropped.append(key)
        elif key.startswith(EXPERT_PREFIX):
            parts = name.split(".")
            if parts[0] in HEAD_MODULES and parts[1] not in served:
                dropped.append(key)
            else:
                mapped[name] = value
        else:
            unexpected.append(key)
    unexpected += [EXPERT_PREFIX + key for key in set(mapped) - set(target)]
    missing = [EXPERT_PREFIX + key for key in set(target) - set(mapped)]
    check_state_dict(
        "stage-1 weights for this policy's expert",
        mapped,
        target,
        missing,
        unexpected,
        prefix=EXPERT_PREFIX,
    )
    return mapped, dropped


def fresh_modules(config: dict[str, Any], directory: Path, expert: ScaleDP) -> list[str]:
    """The expert modules stage 2 starts fresh from an artefact: those it names under
    `reinitialise`, and (with `fresh_heads`) the heads of embodiments it has none for."""
    fresh = [str(module) for module in config.get(REINITIALISE_KEY, [])]
    if config.get(FRESH_HEADS_KEY):
        heads = stage1_expert_config(config, directory).embodiments
        own = expert.state_dict()
        fresh += [
            f"{module}.{name}"
            for name in expert.config.embodiments
            if name not in heads
            for module in HEAD_MODULES
            if any(k.startswith(f"{module}.{name}.") for k in own)
        ]
    return fresh


def load_stage1_expert(policy: DexVLAPolicy, directory: Path) -> list[str]:
    """Load a stage-1 artefact's expert into `policy.expert` strictly; return dropped keys.

    An artefact whose condition took object positions also holds `env_embed.*`: it goes into
    the policy's own `env_embed` when the policy takes positions, and is dropped otherwise.
    """
    config, state = read_stage1(directory)
    env = {k.removeprefix(ENV_PREFIX): v for k, v in state.items() if k.startswith(ENV_PREFIX)}
    state = {k: v for k, v in state.items() if not k.startswith(ENV_PREFIX)}
    fresh = fresh_modules(config, Path(directory), policy.expert)
    mapped, dropped = map_stage1_state(state, policy.expert, fresh)
    policy.expert.load_state_dict(mapped, strict=True, assign=True)  # the read tensors, no copy
    if env and policy.env_embed is not None:
        own = policy.env_embed.state_dict()
        check_state_dict(
            "stage-1 object-position embedding for this policy",
            env,
            own,
            [ENV_PREFIX + k for k in set(own) - set(env)],
            [ENV_PREFIX + k for k in set(env) - set(own)],
            prefix=ENV_PREFIX,
        )
        policy.env_embed.load_state_dict(env, strict=True, assign=True)
    else:
        dropped += [ENV_PREFIX + k for k in env]
    log.info(
        "stage-1 expert loaded from %s; dropped by name: %s; initialised fresh: %s",
        directory, dropped, fresh,
    )  # fmt: skip
    return dropped
