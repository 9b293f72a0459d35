"""DexVLAPolicy: Qwen2-VL + reasoning fusion + ScaleDP, with LeRobot's policy API.

Training (`forward`): the VLM reads every camera and the instruction with the ground-truth
sub-step as the answer (teacher forcing). Its final hidden states are mean-pooled over the
prompt ("action tokens") and over the sub-step tokens ("reasoning tokens"), fused into one
condition vector, and ScaleDP learns to denoise the action chunk from it. The loss is
action (noise MSE on valid steps) + `llm_loss_weight` x language (answer tokens only).

Inference: `generate_reasoning` lets the VLM write the sub-step greedily; `predict_action_chunk`
fuses the current prompt states with that sub-step's states and samples actions with the
diffusion scheduler; `select_action` executes chunks step by step from a queue.

Normalisation lives in `DexVLAProcessor` (dexvla.policy.processor), outside the model; its
statistics are saved with the checkpoint.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from torch import nn
from transformers import PreTrainedTokenizerBase, Qwen2VLConfig
from transformers import Qwen2VLForConditionalGeneration as Qwen2VL

from dexvla.embodiments import get_embodiment
from dexvla.io import atomic_directory, atomic_write_json
from dexvla.policy.checkpoint import (
    CONFIG_NAME,
    STATS_NAME,
    TOKENIZER_DIR,
    WEIGHTS_NAME,
    load_state_dict_strict,
    read_checkpoint_config,
)
from dexvla.policy.configuration import PolicyConfig
from dexvla.policy.diffusion import ActionDiffusion
from dexvla.policy.fusion import ReasoningFusion
from dexvla.policy.processor import DexVLAProcessor, Observation
from dexvla.policy.scaledp import ScaleDP
from dexvla.policy.vlm import (
    IGNORE_INDEX,
    ImageEncoder,
    PromptBuilder,
    build_vlm,
    load_tokenizer,
    masked_mean,
)


@dataclass
class Reasoning:
    """Generated sub-step(s) and their pooled reasoning-token states (B, D_vlm).

    `text` is a string for one observation and a list of strings for a list of observations,
    as `dexvla.runtime.inference` expects.
    """

    text: str | list[str]
    states: torch.Tensor

    @property
    def texts(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else list(self.text)


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
        self.vlm = vlm if vlm is not None else build_vlm(config.vlm, self.tokenizer)
        vlm_dim = self.vlm.config.text_config.hidden_size
        self.fusion = ReasoningFusion(vlm_dim, config.expert.cond_dim)
        self.expert = ScaleDP(config.expert)
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

    def fsdp_wrap_modules(self) -> list[nn.Module]:
        """Submodules FSDP shards one by one: vision blocks, decoder layers, ScaleDP blocks."""
        return [
            *self.vlm.model.visual.blocks,
            *self.vlm.model.language_model.layers,
            *self.expert.blocks,
        ]

    # ----------------------------------------------------------------------------- encoding
    def _vlm_inputs(self, batch: dict[str, Any], embodiment: str) -> dict[str, torch.Tensor]:
        cameras = [
            self.processor.resize(batch[f"observation.images.{cam}"])
            for cam in get_embodiment(embodiment).cameras
        ]
        pixel_values, grid_thw = self.images(cameras)
        return {
            "pixel_values": pixel_values.to(self.device, self.vlm.dtype),
            "image_grid_thw": grid_thw.to(self.device),
        }

    def _tokens_per_image(self, n_cameras: int) -> list[int]:
        return [self.config.vlm.tokens_per_image] * n_cameras

    def _hidden(
        self, input_ids: torch.Tensor, attention: torch.Tensor, vision: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Final hidden states (B, L, D_vlm) of the backbone (without the LM head)."""
        input_ids = input_ids.to(self.device)
        out = self.vlm.model(
            input_ids=input_ids,
            attention_mask=attention.to(self.device),
            mm_token_type_ids=self.prompts.mm_token_type_ids(input_ids),
            use_cache=False,
            **vision,
        )
        return out.last_hidden_state

    def _substeps(self, substeps: list[str]) -> list[str]:
        return substeps if self.config.use_reasoning else [""] * len(substeps)

    # ----------------------------------------------------------------------------- training
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss on a training batch (layout in docs/interfaces.md) and its metrics."""
        embodiment = self.processor.batch_embodiment(batch)
        actions = batch["action"].to(self.device, torch.float32)  # (B, Hc, A)
        is_pad = batch["action_is_pad"].to(self.device)  # (B, Hc)
        state = batch["observation.state"].to(self.device, self.dtype)  # (B, S)
        n_cams = len(get_embodiment(embodiment).cameras)
        encoded = self.prompts.encode(
            self._tokens_per_image(n_cams), list(batch["task"]), self._substeps(batch["substep"])
        )
        hidden = self._hidden(
            encoded.input_ids, encoded.attention_mask, self._vlm_inputs(batch, embodiment)
        )  # (B, L, D)

        # Language loss on the answer only: position i predicts token i + 1.
        labels = encoded.labels[:, 1:].to(self.device)
        answer = labels != IGNORE_INDEX
        logits = self.vlm.lm_head(hidden[:, :-1][answer])  # (N_answer, V)
        language_loss = F.cross_entropy(logits.float(), labels[answer])

        prompt = masked_mean(hidden, encoded.prompt_mask.to(self.device))
        reasoning = masked_mean(hidden, encoded.reasoning_mask.to(self.device))
        cond = self.fusion(prompt, reasoning).to(self.dtype)  # (B, C)

        # K noise draws per observation: the expert's batch is the batch repeated K times.
        k = self.config.noise_samples
        cond, state = cond.repeat(k, 1), state.repeat(k, 1)  # (K*B, C), (K*B, S)

        def denoise(noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            return self.expert(noisy.to(self.dtype), timesteps, cond, state, embodiment)

        action_loss = self.diffusion.loss(denoise, actions.repeat(k, 1, 1), is_pad.repeat(k, 1))
        loss = action_loss + self.config.llm_loss_weight * language_loss
        metrics = {
            "loss": float(loss.detach()),
            "action_loss": float(action_loss.detach()),
            "language_loss": float(language_loss.detach()),
        }
        return loss, metrics

    # ---------------------------------------------------------------------------- inference
    @torch.no_grad()
    def _prompt_and_reasoning_states(
        self,
        batch: dict[str, Any],
        embodiment: str,
        substeps: list[str],
        vision: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled prompt and sub-step states from one teacher-forced pass over prompt + answer.

        `vision` (from `_vlm_inputs`) lets one chunk prepare its images once for every pass.
        """
        n_cams = len(get_embodiment(embodiment).cameras)
        encoded = self.prompts.encode(self._tokens_per_image(n_cams), list(batch["task"]), substeps)
        if vision is None:
            vision = self._vlm_inputs(batch, embodiment)
        hidden = self._hidden(encoded.input_ids, encoded.attention_mask, vision)
        return (
            masked_mean(hidden, encoded.prompt_mask.to(self.device)),
            masked_mean(hidden, encoded.reasoning_mask.to(self.device)),
        )

    @torch.no_grad()
    def _generate_text(
        self, batch: dict[str, Any], embodiment: str, vision: dict[str, torch.Tensor]
    ) -> list[str]:
        n_cams = len(get_embodiment(embodiment).cameras)
        input_ids, attention = self.prompts.encode_prompts(
            self._tokens_per_image(n_cams), list(batch["task"])
        )
        input_ids = input_ids.to(self.device)
        generated = self.vlm.generate(
            input_ids=input_ids,
            attention_mask=attention.to(self.device),
            mm_token_type_ids=self.prompts.mm_token_type_ids(input_ids),
            max_new_tokens=self.config.vlm.max_new_tokens,
            do_sample=False,
            eos_token_id=self.prompts.im_end,
            pad_token_id=self.prompts.pad_id,
            **vision,
        )
        texts = self.tokenizer.batch_decode(
            generated[:, input_ids.shape[1] :], skip_special_tokens=True
        )
        return [self.prompts.parse_answer(text) for text in texts]

    @torch.no_grad()
    def generate_reasoning(self, observation: Observation | list[Observation]) -> Reasoning:
        """Let the VLM write the current sub-step for each observation (greedy decoding)."""
        batch, embodiment = self.processor.prepare(observation)
        vision = self._vlm_inputs(batch, embodiment)
        reasoning, _ = self._reason(batch, embodiment, isinstance(observation, dict), vision)
        return reasoning

    def _reason(
        self, batch: dict[str, Any], embodiment: str, single: bool, vision: dict[str, torch.Tensor]
    ) -> tuple[Reasoning, torch.Tensor | None]:
        """The generated sub-step(s), and the prompt states of the same pass (None if no pass)."""
        size = len(batch["task"])
        if not self.config.use_reasoning:
            states = torch.zeros(size, self.fusion.prompt_proj[0].in_features, device=self.device)
            return Reasoning(text="" if single else [""] * size, states=states), None
        texts = self._generate_text(batch, embodiment, vision)
        prompt, states = self._prompt_and_reasoning_states(batch, embodiment, texts, vision)
        return Reasoning(text=texts[0] if single else texts, states=states), prompt

    @torch.no_grad()
    def predict_action_chunk(
        self,
        observation: Observation | list[Observation],
        reasoning: Reasoning | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, Reasoning]:
        """A chunk of actions in robot units: (Hc, A) for one observation, (B, Hc, A) for a list.

        With `reasoning` given (e.g. cached from an earlier step), the VLM only reads the current
        images and instruction and no text is generated; otherwise the sub-step is generated.
        """
        batch, embodiment = self.processor.prepare(observation)
        single = isinstance(observation, dict)
        vision = self._vlm_inputs(batch, embodiment)
        prompt = None
        if reasoning is None:
            reasoning, prompt = self._reason(batch, embodiment, single, vision)
        elif len(reasoning.texts) != len(batch["task"]):
            raise ValueError(
                f"reasoning holds {len(reasoning.texts)} sub-steps for {len(batch['task'])} "
                "observations"
            )
        if prompt is None:
            # The prompt comes before the answer and attention is causal, so its states do not
            # depend on the sub-step: pass the prompt with an empty answer (a shorter sequence).
            empty = [""] * len(batch["task"])
            prompt, _ = self._prompt_and_reasoning_states(batch, embodiment, empty, vision)
        cond = self.fusion(prompt, reasoning.states.to(prompt.dtype)).to(self.dtype)
        state = batch["observation.state"].to(self.device, self.dtype)
        action_dim = get_embodiment(embodiment).action_dim

        def denoise(noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            return self.expert(noisy.to(self.dtype), timesteps, cond, state, embodiment)

        normalised = self.diffusion.sample(
            denoise,
            (len(batch["task"]), self.config.chunk_size, action_dim),
            device=self.device,
            dtype=torch.float32,
            generator=generator,
        )
        actions = self.processor.unnormalize_actions(normalised.cpu().numpy(), embodiment)
        return (actions[0] if single else actions), reasoning

    @torch.no_grad()
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
        """Write config.json, model.safetensors, stats.json and the tokenizer, atomically.

        Everything goes into a temporary sibling directory that replaces `directory` only once
        complete, so an interrupted save never leaves a half-written checkpoint behind.
        """
        directory = Path(directory)
        with atomic_directory(directory) as staging:
            config = self.config.to_dict()
            config["vlm_architecture"] = self.vlm.config.to_dict()
            atomic_write_json(staging / CONFIG_NAME, config)
            save_model(self, str(staging / WEIGHTS_NAME))
            self.processor.save(staging / STATS_NAME)
            self.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, dtype: torch.dtype | None = None, device: str | None = None
    ) -> DexVLAPolicy:
        """Load a checkpoint written by `save_pretrained`. Loading is strict and never unpickles."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME, STATS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"checkpoint {directory} has no {name}")
        raw = read_checkpoint_config(directory)
        architecture = raw.pop("vlm_architecture")
        config = PolicyConfig.from_dict(raw)
        tokenizer = load_tokenizer(config.vlm, directory / TOKENIZER_DIR)
        vlm = Qwen2VL(Qwen2VLConfig.from_dict(architecture))
        processor = DexVLAProcessor.load(
            directory / STATS_NAME, config.vlm.image_size, config.embodiments
        )
        policy = cls(config, processor=processor, tokenizer=tokenizer, vlm=vlm)
        load_state_dict_strict(policy, directory / WEIGHTS_NAME)
        if dtype is not None or device is not None:
            policy.to(device=device, dtype=dtype)
        return policy.eval()
