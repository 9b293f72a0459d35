"""Qwen2-VL, used as upstream `transformers` ships it, plus the prompt builder that records spans.

The prompt is Qwen2-VL's chat format: a system turn, one user turn holding one image per camera
and then the instruction, and an assistant turn whose answer is `"{substep} Next action:"` and
the end token. The builder tokenises each piece separately and records where the prompt, the
sub-step (reasoning tokens) and the answer lie, so no span is ever inferred from label values
or hard-coded token ids.

What upstream computes on the host inside every forward is done here on the device, once per
layout where it can be: the image processor's patchify (`ImageEncoder`), the M-RoPE position
ids (`mrope_position_ids`) and the vision tower's per-patch layout (`vision_layout`); each is
tested equal to upstream's result.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2VLConfig
from transformers import Qwen2VLForConditionalGeneration as Qwen2VL
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.vision_utils import get_vision_position_ids

from dexvla.imaging import to_unit_float
from dexvla.policy.tokenizer import load_tiny_tokenizer
from dexvla.policy.vision_tower import batch_vision_tower
from dexvla.schema import check_known_fields

ANSWER_SUFFIX = "Next action:"
IGNORE_INDEX = -100
# Qwen2-VL's vision tower: 14 px patches, 2x2 merged into one token, 2 frames a temporal patch.
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
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
    def token_grid(self) -> tuple[int, int]:
        """(rows, columns) of an image's tokens after the vision tower's 2x2 merge."""
        return self.image_size[0] // PIXELS_PER_TOKEN, self.image_size[1] // PIXELS_PER_TOKEN

    @property
    def tokens_per_image(self) -> int:
        rows, columns = self.token_grid
        return rows * columns

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
    The vision tower gets the batched attention and GEMM patch embedding (`batch_vision_tower`).
    """
    if config.pretrained is not None:
        model = Qwen2VL.from_pretrained(config.pretrained, dtype=dtype or torch.float32)
    else:
        model = Qwen2VL(qwen2vl_config(config, tokenizer))
        model = model.to(dtype) if dtype is not None else model
    return batch_vision_tower(model)


@dataclass
class EncodedPrompts:
    """A right-padded batch of prompts with answers, and the masks of their spans. All (B, L).

    `answer_start`: the first position any row's answer can start at (the shortest prompt's
    length), so the language loss needs the LM head only from there on.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_mask: torch.Tensor
    reasoning_mask: torch.Tensor
    answer_start: int

    def to(self, device: torch.device) -> EncodedPrompts:
        """The same prompts on `device`, in one (pinned, asynchronous on CUDA) copy."""
        packed = torch.stack(
            [
                self.input_ids,
                self.attention_mask,
                self.labels,
                self.prompt_mask.long(),
                self.reasoning_mask.long(),
            ]
        )  # (5, B, L)
        ids, attention, labels, prompt, reasoning = to_device(packed, device).unbind(0)
        return EncodedPrompts(
            ids, attention, labels, prompt.bool(), reasoning.bool(), self.answer_start
        )


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to CUDA through pinned memory, so the copy does not block."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


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
        # Training sees the same instructions and sub-steps again and again: tokenise each once.
        self._text = functools.lru_cache(maxsize=4096)(self._tokenize)
        self._system = [self.im_start, *self._text("system\n" + system_prompt), self.im_end]
        self._system += self._text("\n")

    def _tokenize(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False)) if text else ()

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
        answer_start = min(len(prompt) for prompt, _, _ in rows)
        return EncodedPrompts(
            input_ids, attention, labels, prompt_mask, reasoning_mask, answer_start
        )

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
    """Qwen2-VL's image processor (normalise, then patchify) in torch, on the images' device.

    Images arrive already resized (by `dexvla.imaging.resize_images`, the one resize of training
    and inference), so only normalisation and patchifying are left. With `frames=2` the output
    equals `Qwen2VLImageProcessorPil(do_resize=False, do_rescale=False)` on the same images (a
    test compares them), without the round trip through numpy on the CPU. The default, one
    frame per patch, is what the policy feeds its tower: upstream repeats each image
    TEMPORAL_PATCH_SIZE times, and `LinearPatchEmbed` gives the same product from one copy at
    half the work (it sums its kernel's temporal taps).

    The patches are gathered in the images' own dtype (bytes, for uint8 frames) and then
    normalised in one pass: `x * scale + shift`, the processor's `(x / 255 - mean) / std`.
    """

    def __init__(self, frames: int = 1) -> None:
        if frames not in (1, TEMPORAL_PATCH_SIZE):
            raise ValueError(f"frames must be 1 or {TEMPORAL_PATCH_SIZE}, got {frames}")
        self.frames = frames
        self._affine: dict[tuple[torch.device, bool], tuple[torch.Tensor, torch.Tensor]] = {}

    def _scale_shift(self, device: torch.device, uint8: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per channel (3, 1): OpenAI CLIP's normalisation as one multiply-add, folding in the
        1/255 of uint8 images; computed in float64, stored float32, once per device."""
        key = (device, uint8)
        if key not in self._affine:
            mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float64).view(3, 1)
            std = torch.tensor(OPENAI_CLIP_STD, dtype=torch.float64).view(3, 1)
            scale = 1.0 / (std * 255.0 if uint8 else std)
            self._affine[key] = (
                scale.to(device, torch.float32),
                (-mean / std).to(device, torch.float32),
            )
        return self._affine[key]

    def __call__(self, cameras: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """cameras: one (B, 3, h, w) tensor per camera, all the same size: float in [0, 1] or
        uint8 (its value / 255).

        Returns pixel_values (B * n_cams * patches, 3 * frames * 14 * 14) float32 and
        image_grid_thw (B * n_cams, 3), sample-major (sample 0's cameras first) as the prompt
        lists them.
        """
        images = torch.stack(cameras, dim=1).flatten(0, 1)  # (N, 3, h, w)
        uint8 = images.dtype == torch.uint8
        if not uint8:
            images = to_unit_float(images)  # float32; refuses other integer types
        n, channels, height, width = images.shape
        rows, cols = height // PATCH_SIZE, width // PATCH_SIZE
        patches = images.reshape(
            n,
            channels,
            rows // MERGE_SIZE,
            MERGE_SIZE,
            PATCH_SIZE,
            cols // MERGE_SIZE,
            MERGE_SIZE,
            PATCH_SIZE,
        )
        # (n, rows/2, cols/2, 2, 2, C, 14, 14): each 2x2 block of patches together, row-major
        patches = patches.permute(0, 2, 5, 3, 6, 1, 4, 7)
        if self.frames > 1:  # upstream's clip of identical frames: (..., C, frames, 14, 14)
            patches = patches.unsqueeze(6).expand(*patches.shape[:6], self.frames, -1, -1)
        patches = patches.reshape(n * rows * cols, channels, -1)  # (patches, C, frames * 196)
        scale, shift = self._scale_shift(images.device, uint8)
        pixel_values = torch.addcmul(shift, patches, scale).flatten(1)  # float32
        grid = torch.ones(
            n, 3, dtype=torch.long, device=images.device
        )  # (t, h, w) = (1, rows, cols)
        grid[:, 1], grid[:, 2] = rows, cols
        return pixel_values, grid


@functools.lru_cache(maxsize=16)
def vision_layout(
    n_images: int, rows: int, cols: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """The vision tower's per-patch inputs that depend only on the image layout, built once.

    Qwen2-VL's tower derives its rotary positions and `cu_seqlens` from image_grid_thw with a
    Python loop over images (and a host read) in every forward; for `n_images` images of
    rows x cols patches (before the merge) they are the same every step. Qwen2-VL's forward
    takes them precomputed as `image_position_ids` (N_img * rows * cols, 2) and
    `image_cu_seqlens` (N_img + 1,). Callers must not modify them (they are cached).
    """
    one = get_vision_position_ids(torch.tensor([[1, rows, cols]]), MERGE_SIZE)  # (rows*cols, 2)
    cu_seqlens = torch.arange(n_images + 1, dtype=torch.int32) * (rows * cols)
    return {
        "image_position_ids": one.repeat(n_images, 1).to(device),
        "image_cu_seqlens": cu_seqlens.to(device),
    }


def mrope_position_ids(
    image_mask: torch.Tensor, attention_mask: torch.Tensor, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL's M-RoPE positions, as upstream `get_rope_index` computes them, in one pass.

    image_mask (B, L): set at image tokens; attention_mask (B, L): set at real tokens (left or
    right padding); grid: every image's (rows, cols) of tokens (all images one size, one frame).
    Text tokens count up by one; an image's tokens sit at (start, start + row, start + col), and
    the text after it resumes at start + max(rows, cols). Padding gets 0.
    Returns position_ids (3, B, L) and rope_deltas (B, 1) (max position + 1 - real tokens).
    """
    rows, cols = grid
    per_image, advance = rows * cols, max(rows, cols)
    valid = attention_mask.bool()
    image = (image_mask.bool() & valid).long()
    index = valid.long().cumsum(1) - 1  # (B, L) position among the row's real tokens
    before = image.cumsum(1) - image  # (B, L) image tokens before each position
    # 1-D position: each earlier image counts `advance` instead of its token count; for an
    # image token this is its image's start
    base = index - before + (before // per_image) * advance
    offset = (before % per_image) * image  # (B, L) place within its image (0 for text)
    positions = torch.stack([base, base + offset // cols, base + offset % cols])  # (3, B, L)
    positions = positions.masked_fill(~valid, 0)
    deltas = positions.amax(dim=(0, 2)) + 1 - valid.sum(1)  # (B,)
    return positions, deltas.unsqueeze(1)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden (B, L, D) over positions where mask (B, L) is set; zeros where none is."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
