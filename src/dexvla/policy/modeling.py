"""DexVLAPolicy: Qwen2-VL + reasoning fusion + ScaleDP, with LeRobot's policy API.

One observation goes down the layers in one pass (B batch, L tokens, D_vlm the VLM width,
C the condition width, Hc the chunk, A / S the embodiment's action / state size):

1. `processor.prepare`: validate, batch, normalise state -> images (B, 3, H, W), state (B, S);
2. `encode`: cameras -> vision tower, instruction + sub-step answer -> Qwen2-VL -> final hidden
   states (B, L, D_vlm), mean-pooled over the prompt ("action tokens") and over the sub-step
   ("reasoning tokens") -> (B, D_vlm) each;
3. `fusion`: the two pooled states -> one condition vector (B, C) (`condition`). With
   `PolicyConfig.env_state`, an "aux" policy predicts the simulator's object positions from the
   pooled prompt in training, an "oracle" one adds the recorded positions to the condition,
   a "predicted" one adds them in training and its own prediction at inference;
4. ScaleDP (`expert.denoiser`) inside the diffusion loss (training) or sampler (inference)
   -> normalised actions (B, Hc, A);
5. `processor.unnormalize_actions` -> robot units.

Training (`forward`) teacher-forces the ground-truth sub-step; the loss is action (noise MSE on
valid steps) + `llm_loss_weight` x language (answer tokens only). Inference lets the VLM write
the sub-step greedily first (`generate_reasoning`), or reuses a cached one; `select_action`
executes chunks step by step from a queue. The checkpoint format is `dexvla.policy.checkpoint`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers import Qwen2VLForConditionalGeneration as Qwen2VL

from dexvla.embodiments import get_embodiment
from dexvla.policy.checkpoint import (
    load_state_dict_strict,
    read_policy_checkpoint,
    write_policy_checkpoint,
)
from dexvla.policy.configuration import POSITION_CONDITIONS, PolicyConfig
from dexvla.policy.diffusion import ActionDiffusion
from dexvla.policy.fusion import ReasoningFusion
from dexvla.policy.inference import (
    Generation,
    check_cached_reasoning,
    generate,
    run_prompt,
    sample_actions,
)
from dexvla.policy.processor import DexVLAProcessor, object_positions
from dexvla.policy.scaledp import ScaleDP
from dexvla.policy.vision_tower import batch_vision_tower
from dexvla.policy.vlm import (
    IGNORE_INDEX,
    MERGE_SIZE,
    ImageEncoder,
    PromptBuilder,
    build_vlm,
    load_tokenizer,
    masked_mean,
    mrope_position_ids,
    to_device,
    vision_layout,
)
from dexvla.schema import (
    ACTION,
    ACTION_IS_PAD,
    STATE,
    SUBSTEP,
    TASK,
    Observation,
    Observations,
    Reasoning,
    image_key,
)


@dataclass
class Encoding:
    """One VLM pass over prompt + answer, and its pooled states as the fusion reads them.

    `hidden` (B, L, D_vlm): final hidden states (before the LM head); `labels` (B, L): the
    answer's token ids, IGNORE_INDEX elsewhere (the language loss's targets); `prompt` and
    `reasoning` (B, D_vlm): means over the prompt and over the sub-step tokens; `answer_start`:
    the first position any answer starts at (the language loss reads `hidden` from there).
    """

    hidden: torch.Tensor
    labels: torch.Tensor
    prompt: torch.Tensor
    reasoning: torch.Tensor
    answer_start: int


class DexVLAPolicy(nn.Module):
    """The DexVLA policy; see the module docstring for the data flow."""

    def __init__(
        self,
        config: PolicyConfig,
        processor: DexVLAProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        vlm: Qwen2VL | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(config.vlm)
        # A given backbone (a loaded checkpoint's) gets the batched vision tower too.
        self.vlm = (
            batch_vision_tower(vlm) if vlm is not None else build_vlm(config.vlm, self.tokenizer)
        )
        vlm_dim = self.vlm.config.text_config.hidden_size
        self.fusion = ReasoningFusion(vlm_dim, config.expert.cond_dim)
        self.expert = ScaleDP(config.expert)
        dim = config.env_state_dim
        use = config.env_state
        self.env_head = nn.Linear(vlm_dim, dim) if use in ("aux", "predicted") else None
        self.env_embed = (
            nn.Linear(dim, config.expert.cond_dim) if use in POSITION_CONDITIONS else None
        )
        self.diffusion = ActionDiffusion(config.diffusion)
        self.prompts = PromptBuilder(self.tokenizer, config.vlm.system_prompt)
        self.images = ImageEncoder()
        self.processor = processor or DexVLAProcessor(config.vlm.image_size, config.embodiments)
        self._queue: deque[np.ndarray] = deque()

    @property
    def device(self) -> torch.device:
        return next(self.expert.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.expert.parameters()).dtype

    # ------------------------------------------------------------------------ training hooks
    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in the backward pass: VLM decoder/vision blocks and ScaleDP.

        Non-reentrant checkpointing, so frozen inputs (a frozen vision tower or embedding) need
        no `enable_input_require_grads` trick.
        """
        self.vlm.activation_checkpointing_enable({"use_reentrant": False})
        self.expert.gradient_checkpointing = True

    def compile_blocks(self) -> None:
        """`torch.compile` every transformer block in place (state-dict keys unchanged): vision
        blocks, decoder layers (any prompt length) and ScaleDP's trunk. The first steps compile
        (30-50 s on a 2-core CPU); a tiny stage-2 run then trains 1.05-1.07x faster than eager."""
        for block in self.vlm.model.visual.blocks:
            block.compile(dynamic=False)  # every batch's images are one layout
        for layer in self.vlm.model.language_model.layers:
            layer.compile(dynamic=True)  # prompt lengths vary: one shape-generic graph
        self.expert.compile_steps(training=True)

    def fsdp_wrap_modules(self) -> list[nn.Module]:
        """Submodules FSDP shards one by one: vision blocks, decoder layers, ScaleDP blocks."""
        return [
            *self.vlm.model.visual.blocks,
            *self.vlm.model.language_model.layers,
            *self.expert.blocks,
        ]

    # ----------------------------------------------------------------------- the VLM pass
    def vision_inputs(self, batch: dict[str, Any], embodiment: str) -> dict[str, torch.Tensor]:
        """Every camera of `batch` on the device, resized and patchified: pixel_values
        (B * n_cams * patches, 3 * 14 * 14), one frame a patch; image_grid_thw (B * n_cams, 3)."""
        cameras = [
            self.processor.resize(to_device(batch[image_key(cam)], self.device))  # (B, 3, h, w)
            for cam in get_embodiment(embodiment).cameras
        ]
        pixel_values, grid_thw = self.images(cameras)
        return {"pixel_values": pixel_values.to(self.vlm.dtype), "image_grid_thw": grid_thw}

    def encode(
        self,
        batch: dict[str, Any],
        embodiment: str,
        substeps: list[str],
        vision: dict[str, torch.Tensor] | None = None,
    ) -> Encoding:
        """Cameras, instruction and `substeps` as the answer, through the VLM, then pooled.

        The one pass training (ground-truth sub-steps) and inference (generated ones) share.
        `vision` (from `vision_inputs`) lets one chunk prepare its images once for every pass.
        """
        if vision is None:
            vision = self.vision_inputs(batch, embodiment)
        tokens = self.prompts.encode(self._image_tokens(embodiment), list(batch[TASK]), substeps)
        tokens = tokens.to(self.device)  # (B, L) each
        image_mask = self.prompts.mm_token_type_ids(tokens.input_ids)
        token_grid = self.config.vlm.token_grid
        position_ids, _ = mrope_position_ids(image_mask, tokens.attention_mask, token_grid)
        rows, cols = (MERGE_SIZE * n for n in token_grid)  # patches per image
        layout = vision_layout(
            vision["pixel_values"].shape[0] // (rows * cols), rows, cols, self.device
        )  # the tower's rotary positions and cu_seqlens, built once per layout
        hidden = self.vlm.model(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            position_ids=position_ids,  # (3, B, L)
            mm_token_type_ids=image_mask,
            use_cache=False,
            **vision,
            **layout,
        ).last_hidden_state  # (B, L, D_vlm)
        return Encoding(
            hidden=hidden,
            labels=tokens.labels,
            prompt=masked_mean(hidden, tokens.prompt_mask),  # (B, D_vlm)
            reasoning=masked_mean(hidden, tokens.reasoning_mask),  # (B, D_vlm)
            answer_start=tokens.answer_start,
        )

    def _image_tokens(self, embodiment: str) -> list[int]:
        """The prompt's image-token count for each camera of `embodiment`."""
        return [self.config.vlm.tokens_per_image] * len(get_embodiment(embodiment).cameras)

    # ----------------------------------------------------------------------------- training
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss on a training batch (layout in docs/interfaces.md) and its metrics.

        The metrics are detached 0-d tensors, so the step never waits for the device; whoever
        logs them reads them (`float(...)`) when it logs.
        """
        embodiment = self.processor.batch_embodiment(batch)
        substeps = list(batch[SUBSTEP])
        if not self.config.use_reasoning:
            substeps = [""] * len(substeps)
        encoding = self.encode(batch, embodiment, substeps)

        # Language loss on the answer only: position i predicts token i + 1. The LM head runs
        # from the first position that can predict an answer token (a fixed slice: no
        # data-dependent shapes), and cross_entropy skips the other positions.
        start = encoding.answer_start - 1
        logits = self.vlm.lm_head(encoding.hidden[:, start:-1])  # (B, L - 1 - start, V)
        targets = encoding.labels[:, start + 1 :]  # (B, L - 1 - start)
        language_loss = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX
        )

        # The recorded object positions (B, E): the aux head's target, and what the expert sees
        # in training (teacher-forced, like the sub-step) when its condition takes them.
        uses_positions = self.env_head is not None or self.env_embed is not None
        positions = self.env_state(batch) if uses_positions else None
        cond = self.condition(encoding.prompt, encoding.reasoning, positions)  # (B, C)
        # K noise draws per observation: the expert's batch is the batch repeated K times.
        k = self.config.noise_samples
        actions = batch[ACTION].to(self.device, torch.float32).repeat(k, 1, 1)  # (K*B, Hc, A)
        is_pad = batch[ACTION_IS_PAD].to(self.device).repeat(k, 1)  # (K*B, Hc)
        state = batch[STATE].to(self.device, self.dtype).repeat(k, 1)  # (K*B, S)
        denoise = self.expert.denoiser(cond.repeat(k, 1), state, embodiment)
        action_loss = self.diffusion.loss(denoise, actions, is_pad)

        loss = action_loss + self.config.llm_loss_weight * language_loss
        metrics = {"action_loss": action_loss.detach(), "language_loss": language_loss.detach()}
        if self.env_head is not None:
            predicted = self.env_head(encoding.prompt).float()  # (B, E)
            env_loss = F.mse_loss(predicted, positions)
            loss = loss + self.config.env_state_loss_weight * env_loss
            metrics["env_state_loss"] = env_loss.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def condition(
        self, prompt: torch.Tensor, reasoning: torch.Tensor, position: torch.Tensor | None
    ) -> torch.Tensor:
        """Pooled prompt and reasoning states (B, D_vlm), and the object positions (B, E) an
        "oracle" or "predicted" policy takes (scaled) -> the expert's condition (B, C)."""
        cond = self.fusion(prompt, reasoning)  # (B, C)
        if self.env_embed is not None:
            assert position is not None, "this policy's condition takes object positions"
            cond = cond + self.env_embed(position.to(cond))
        return cond.to(self.dtype)

    def inference_position(
        self, prompt: torch.Tensor, batch: dict[str, Any]
    ) -> torch.Tensor | None:
        """The positions the condition takes at inference: the observation's (oracle), the
        head's prediction from the pooled prompt (predicted), or None."""
        if self.config.env_state == "oracle":
            return self.env_state(batch)
        if self.config.env_state == "predicted":
            assert self.env_head is not None
            return self.env_head(prompt).float()
        return None

    def env_state(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's object positions (B, E), fp32, scaled by ENV_STATE_SCALE."""
        return object_positions(batch, self.config, self.device)

    # ---------------------------------------------------------------------------- inference
    @torch.inference_mode()
    def generate_reasoning(self, observation: Observations) -> Reasoning:
        """Let the VLM write the current sub-step for each observation (greedy decoding)."""
        batch, embodiment = self.processor.prepare(observation)
        vision = self.vision_inputs(batch, embodiment)
        reasoning, _ = self._reason(batch, embodiment, vision, isinstance(observation, dict))
        return reasoning

    @torch.inference_mode()
    def predict_action_chunk(
        self,
        observation: Observations,
        reasoning: Reasoning | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, Reasoning]:
        """A chunk of actions in robot units: (Hc, A) for one observation, (B, Hc, A) for a list.

        Without `reasoning`, the sub-step is generated: one vision pass, one prompt prefill and
        the decoding, whose states give both pooled spans. With `reasoning` given (cached from
        an earlier step), the VLM reads the current images and instruction in one prompt pass
        and writes nothing. Every call computes its own positions and caches (no state on the
        model), so a reasoning thread may run beside it (`dexvla.policy.inference`).
        """
        batch, embodiment = self.processor.prepare(observation)  # uint8 images, state (B, S)
        single, size = isinstance(observation, dict), len(batch[TASK])
        vision = self.vision_inputs(batch, embodiment)
        if reasoning is None:
            reasoning, prompt = self._reason(batch, embodiment, vision, single)
        else:
            check_cached_reasoning(reasoning, size)
            prompt = self._prompt_states(batch, embodiment, vision)
        position = self.inference_position(prompt, batch)  # (B, E) or None
        cond = self.condition(prompt, reasoning.states.to(prompt), position)  # (B, C)
        state = batch[STATE].to(self.device, self.dtype)  # (B, S)
        normalised = sample_actions(
            self.diffusion,
            self.expert.denoiser(cond, state, embodiment),
            (size, self.config.chunk_size, get_embodiment(embodiment).action_dim),
            device=self.device,
            dtype=self.dtype,
            generator=generator,
        )  # (B, Hc, A) fp32 in [-1, 1]
        actions = self.processor.unnormalize_actions(normalised.cpu().numpy(), embodiment)
        return (actions[0] if single else actions), reasoning

    def _reason(
        self, batch: dict[str, Any], embodiment: str, vision: dict[str, torch.Tensor], single: bool
    ) -> tuple[Reasoning, torch.Tensor]:
        """The generated sub-step(s) with their pooled states (B, D_vlm), and the pooled prompt
        states (B, D_vlm) of the same pass. Without reasoning: empty text, zero states.
        """
        size = len(batch[TASK])
        if not self.config.use_reasoning:
            prompt = self._prompt_states(batch, embodiment, vision)
            texts, states = [""] * size, torch.zeros_like(prompt)
        else:
            generation = self._generate(batch, embodiment, vision)
            texts, states, prompt = generation.texts, generation.reasoning, generation.prompt
        return Reasoning(text=texts[0] if single else texts, states=states), prompt

    def _generate(
        self, batch: dict[str, Any], embodiment: str, vision: dict[str, torch.Tensor]
    ) -> Generation:
        """Greedy sub-steps and both pooled spans from one prompt prefill (left-padded)."""
        return generate(
            self.vlm,
            self.prompts,
            self._image_tokens(embodiment),
            list(batch[TASK]),
            vision,
            self.config.vlm.max_new_tokens,
        )

    def _prompt_states(
        self, batch: dict[str, Any], embodiment: str, vision: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Pooled prompt states (B, D_vlm) from one pass over the prompts alone (no answer)."""
        tokens = self._image_tokens(embodiment)
        return run_prompt(
            self.vlm, self.prompts, tokens, list(batch[TASK]), vision, use_cache=False
        ).pooled

    @torch.inference_mode()
    def select_action(self, observation: Observation) -> np.ndarray:
        """The next action (A,) for one observation, running a new chunk when the queue is empty."""
        if not self._queue:
            chunk, _ = self.predict_action_chunk(observation)
            self._queue.extend(chunk[: self.config.n_action_steps])
        return self._queue.popleft()

    def reset(self) -> None:
        """Forget queued actions (call at the start of every episode)."""
        self._queue.clear()

    # --------------------------------------------------------------------------- checkpoints
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the checkpoint (config, weights, stats, tokenizer) atomically."""
        return write_policy_checkpoint(
            directory,
            self.config,
            self,
            self.vlm.config,
            self.processor.require_stats(),
            self.tokenizer,
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, dtype: torch.dtype | None = None, device: str | None = None
    ) -> DexVLAPolicy:
        """Load a checkpoint written by `save_pretrained`. Loading is strict and never unpickles."""
        checkpoint = read_policy_checkpoint(directory)
        config = checkpoint.config
        policy = cls(
            config,
            processor=DexVLAProcessor(config.vlm.image_size, config.embodiments, checkpoint.stats),
            tokenizer=load_tokenizer(config.vlm, checkpoint.tokenizer_dir),
            vlm=Qwen2VL(checkpoint.vlm_architecture),
        )
        load_state_dict_strict(policy, checkpoint.weights_path)
        if dtype is not None or device is not None:
            policy.to(device=device, dtype=dtype)
        return policy.eval()
