"""Qwen2-VL, used as upstream `transformers` ships it, plus the prompt builder that records spans.

The prompt is Qwen2-VL's chat format: a system turn, one user turn holding one image per camera
and then the instruction, and an assistant turn whose answer is `"{substep} Next action:"` and
the end token. The builder tokenises each piece separately and records where the prompt, the
sub-step (reasoning tokens) and the answer lie, so no span is ever inferred from label values
or hard-coded token ids.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2VLConfig
from transformers import Qwen2VLForConditionalGeneration as Qwen2VL
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from dexvla.policy.tokenizer import load_tiny_tokenizer
from dexvla.schema import check_known_fields

ANSWER_SUFFIX = "Next action:"
IGNORE_INDEX = -100
# Qwen2-VL's vision tower: 14 px patches, 2x2 merged into one token, 2 frames a temporal patch.
PATCH_SIZE = 14
MERGE_SIZE = 2
PIXELS_PER_TOKEN = PATCH_SIZE * MERGE_SIZE


@dataclass(frozen=True)
class VLMConfig:
    """A vision-language backbone: its architecture, where its weights come from, its prompt.

    `pretrained` is a local directory or hub id; when set, weights, architecture and tokenizer
    come from there. When unset, the model is built with random weights from `text` and
    `vision` (Qwen2VLConfig sub-configs) and the project's tiny tokenizer.
    """

    name: str
    text: dict[str, Any] = field(default_factory=dict)
    vision: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    image_size: tuple[int, int] = (84, 84)
    max_new_tokens: int = 32
    system_prompt: str = "You are a helpful assistant."

    def __post_init__(self) -> None:
        height, width = self.image_size
        if height % PIXELS_PER_TOKEN or width % PIXELS_PER_TOKEN or min(height, width) <= 0:
            raise ValueError(
                f"VLM {self.name!r}: image_size {self.image_size} must be positive multiples of "
                f"{PIXELS_PER_TOKEN} (Qwen2-VL's patch 14 x merge 2)"
            )
        if self.max_new_tokens <= 0:
            raise ValueError(f"VLM {self.name!r}: max_new_tokens must be positive")

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size[0] // PIXELS_PER_TOKEN) * (self.image_size[1] // PIXELS_PER_TOKEN)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLMConfig:
        check_known_fields(cls, data)
        data = dict(data)
        data["image_size"] = tuple(data["image_size"])
        return cls(**data)


def load_tokenizer(config: VLMConfig, path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer for a backbone: from `path` (a checkpoint), `config.pretrained`, or tiny."""
    source = path or config.pretrained
    if source is None:
        return load_tiny_tokenizer()
    return AutoTokenizer.from_pretrained(str(source))


def qwen2vl_config(config: VLMConfig, tokenizer: PreTrainedTokenizerBase | None) -> Qwen2VLConfig:
    """The `transformers` config of a randomly initialised backbone.

    Token ids come from the tokenizer; without one (counting parameters on `meta`), Qwen2-VL's
    own ids and the preset's vocabulary size are used.
    """
    text = dict(config.text)
    extra: dict[str, int] = {}
    if tokenizer is not None:
        ids = tokenizer.convert_tokens_to_ids(
            ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
        )
        extra = dict(
            zip(
                (
                    "image_token_id",
                    "video_token_id",
                    "vision_start_token_id",
                    "vision_end_token_id",
                ),
                ids,
                strict=True,
            )
        )
        text = {
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            **text,
        }
    return Qwen2VLConfig(
        text_config=text,
        vision_config=dict(config.vision),
        tie_word_embeddings=text.get("tie_word_embeddings", True),
        **extra,
    )


def build_vlm(
    config: VLMConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype | None = None
) -> Qwen2VL:
    """Qwen2-VL with real weights (`config.pretrained`) or random weights from the config.

    Under `with torch.device("meta"):` a random build allocates nothing (parameter counting).
    """
    if config.pretrained is not None:
        return Qwen2VL.from_pretrained(config.pretrained, dtype=dtype or torch.float32)
    model = Qwen2VL(qwen2vl_config(config, tokenizer))
    return model.to(dtype) if dtype is not None else model


@dataclass
class EncodedPrompts:
    """A right-padded batch of prompts with answers, and the masks of their spans. All (B, L)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_mask: torch.Tensor
    reasoning_mask: torch.Tensor


class PromptBuilder:
    """Builds Qwen2-VL chat prompts piece by piece and records each piece's span."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, system_prompt: str) -> None:
        self.tokenizer = tokenizer
        ids = tokenizer.convert_tokens_to_ids(
            ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
        )
        unknown = tokenizer.unk_token_id
        if any(i is None or (unknown is not None and i == unknown) for i in ids):
            raise ValueError("the tokenizer lacks Qwen2-VL's chat and vision special tokens")
        self.im_start, self.im_end, self.vision_start, self.vision_end, self.image_pad = ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.im_end
        self._system = [self.im_start, *self._text("system\n" + system_prompt), self.im_end]
        self._system += self._text("\n")

    def _text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def prompt_ids(self, tokens_per_image: list[int], instruction: str) -> list[int]:
        """System turn, user turn (images then instruction), and the assistant turn's opening."""
        ids = [*self._system, self.im_start, *self._text("user\n")]
        for count in tokens_per_image:
            ids += [self.vision_start, *([self.image_pad] * count), self.vision_end]
        ids += [*self._text(instruction), self.im_end, *self._text("\n")]
        ids += [self.im_start, *self._text("assistant\n")]
        return ids

    def answer_ids(self, substep: str) -> tuple[list[int], int]:
        """The answer's ids and how many of them are the sub-step (the reasoning tokens)."""
        substep = substep.strip()
        reasoning = self._text(substep)
        suffix = self._text((" " if substep else "") + ANSWER_SUFFIX)
        return [*reasoning, *suffix, self.im_end], len(reasoning)

    def encode(
        self, tokens_per_image: list[int], instructions: list[str], substeps: list[str]
    ) -> EncodedPrompts:
        """Prompt + answer for each sample; labels only on the answer (language loss)."""
        if len(instructions) != len(substeps):
            raise ValueError(
                f"{len(instructions)} instructions but {len(substeps)} sub-steps in the batch"
            )
        rows = []
        for instruction, substep in zip(instructions, substeps, strict=True):
            prompt = self.prompt_ids(tokens_per_image, instruction)
            answer, n_reasoning = self.answer_ids(substep)
            rows.append((prompt, answer, n_reasoning))
        length = max(len(p) + len(a) for p, a, _ in rows)
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        prompt_mask = torch.zeros((batch, length), dtype=torch.bool)
        reasoning_mask = torch.zeros((batch, length), dtype=torch.bool)
        for row, (prompt, answer, n_reasoning) in enumerate(rows):
            n_prompt, total = len(prompt), len(prompt) + len(answer)
            input_ids[row, :total] = torch.tensor(prompt + answer)
            labels[row, n_prompt:total] = torch.tensor(answer)
            attention[row, :total] = 1
            prompt_mask[row, :n_prompt] = True
            reasoning_mask[row, n_prompt : n_prompt + n_reasoning] = True
        return EncodedPrompts(input_ids, attention, labels, prompt_mask, reasoning_mask)

    def encode_prompts(
        self, tokens_per_image: list[int], instructions: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompts alone, for generation: (input_ids, attention_mask), each (B, L)."""
        rows = [self.prompt_ids(tokens_per_image, text) for text in instructions]
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention[row, length - len(ids) :] = 1
        return input_ids, attention

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """1 where an image token stands, as Qwen2-VL's forward requires."""
        return (input_ids == self.image_pad).to(torch.int)

    def parse_answer(self, text: str) -> str:
        """The sub-step in a generated answer: the text before `Next action:`."""
        return text.split(ANSWER_SUFFIX, 1)[0].strip()


class ImageEncoder:
    """Turns resized camera images into Qwen2-VL's patch sequence with its image processor.

    Images arrive already resized (by `dexvla.policy.processor.resize_images`, the one function used
    in training and inference), so the processor only normalises and patchifies.
    """

    def __init__(self) -> None:
        self.processor = Qwen2VLImageProcessorPil(do_resize=False, do_rescale=False)

    def __call__(self, cameras: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """cameras: one (B, 3, h, w) float tensor in [0, 1] per camera, all the same size.

        Returns pixel_values (B * n_cams * patches, 3 * 2 * 14 * 14) and image_grid_thw
        (B * n_cams, 3), sample-major (sample 0's cameras first) as the prompt lists them.
        """
        stacked = torch.stack(cameras, dim=1)  # (B, n_cams, 3, h, w)
        images = stacked.flatten(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        out = self.processor(images=list(np.ascontiguousarray(images)), return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden (B, L, D) over positions where mask (B, L) is set; zeros where none is."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
