"""The inference passes of `DexVLAPolicy`: one vision pass and one prefill per chunk.

A chunk with reasoning runs the prompt (cameras + instruction) through Qwen2-VL once, keeps its
KV cache, and decodes the sub-step greedily from it; the pooled prompt states come from that
prefill and the pooled sub-step states from the decoded tokens' own states. Attention is
causal, so these equal what a teacher-forced pass over prompt + answer computes (training's
`DexVLAPolicy.encode`): same tokens, same positions, same states. Pooling covers the same span
as training's `reasoning_mask`: the tokens of the parsed sub-step as `PromptBuilder.answer_ids`
writes them. When the decoded tokens are not exactly those (a sub-step cut by
`max_new_tokens`, or text whose tokenisation differs from the decoded ids), the sub-step's ids
are run on top of the cached prompt instead: still no second vision or prompt pass.

Every pass takes explicit M-RoPE position ids computed per call (`prompt_positions`), so no
call reads the `rope_deltas` Qwen2-VL caches on the model: a background reasoning thread and the
fast action path share no mutable state. `sample_actions` is DDIM in fp32 torch maths with
coefficients prepared before the loop (no host sync per step, CUDA-graph friendly); other
schedulers go through `ActionDiffusion.sample`.

Shapes: B batch, L prompt length (left-padded), N decoded tokens, D the VLM width.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers import Qwen2VLForConditionalGeneration as Qwen2VL

from dexvla.policy.diffusion import ActionDiffusion, DenoiseFn, DiffusionConfig, make_scheduler
from dexvla.policy.scaledp import Denoiser
from dexvla.policy.vlm import PromptBuilder, masked_mean
from dexvla.schema import Reasoning


@dataclass
class PromptPass:
    """The prompt's final hidden states and what decoding continues from.

    hidden (B, L, D); attention (B, L) long, 0 on left padding; next_position (B,) long, the
    M-RoPE position of the first token after each prompt; cache: the KV cache, or None.
    """

    hidden: torch.Tensor
    attention: torch.Tensor
    next_position: torch.Tensor
    cache: DynamicCache | None

    @property
    def pooled(self) -> torch.Tensor:
        """Mean over the prompt tokens (B, D): training's `prompt_mask` span."""
        return masked_mean(self.hidden, self.attention.bool())


@dataclass
class Generation:
    """Greedy answers, their sub-steps, and the pooled states of both spans."""

    texts: list[str]
    prompt: torch.Tensor  # (B, D)
    reasoning: torch.Tensor  # (B, D)


def prompt_positions(
    vlm: Qwen2VL, input_ids: torch.Tensor, attention: torch.Tensor, grid_thw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE positions (3, B, L) of left-padded prompts and the next position (B,), on CPU.

    Computed from the inputs alone (`get_rope_index` is a pure function of them), never from
    the model's cached `rope_deltas`.
    """
    image_types = (input_ids == vlm.config.image_token_id).to(torch.int)
    positions, _ = vlm.model.get_rope_index(
        input_ids, image_types, image_grid_thw=grid_thw.cpu(), attention_mask=attention
    )
    return positions, positions.amax(dim=(0, 2)) + 1


def run_prompt(
    vlm: Qwen2VL,
    prompts: PromptBuilder,
    tokens_per_image: list[int],
    instructions: list[str],
    vision: dict[str, torch.Tensor],
    *,
    use_cache: bool,
) -> PromptPass:
    """The prompts (left-padded, no answer) with their images through Qwen2-VL: one pass."""
    input_ids, attention = prompts.encode_prompts(tokens_per_image, instructions)  # (B, L)
    positions, next_position = prompt_positions(vlm, input_ids, attention, vision["image_grid_thw"])
    device = vision["pixel_values"].device
    cache = DynamicCache(config=vlm.config.text_config) if use_cache else None
    attention = attention.to(device)
    hidden = vlm.model(
        input_ids=input_ids.to(device),
        attention_mask=attention,
        position_ids=positions.to(device),
        cache=cache,
        use_cache=use_cache,
        **vision,
    ).last_hidden_state  # (B, L, D)
    return PromptPass(hidden, attention, next_position.to(device), cache)


def _text_step(
    vlm: Qwen2VL, prompt: PromptPass, tokens: torch.Tensor, mask: torch.Tensor | None, offset: int
) -> torch.Tensor:
    """tokens (B, T) after the cached prompt + `offset` tokens -> final states (B, T, D).

    mask (B, L + offset + T) covers the cache and the new tokens; None when nothing is padded.
    """
    steps = torch.arange(tokens.shape[1], device=tokens.device)
    positions = (prompt.next_position[:, None] + offset + steps).expand(3, -1, -1)  # (3, B, T)
    return vlm.model.language_model(
        input_ids=tokens,
        attention_mask=mask,
        position_ids=positions,
        cache=prompt.cache,
        use_cache=True,
    ).last_hidden_state


def greedy_decode(
    vlm: Qwen2VL, prompt: PromptPass, max_new_tokens: int, eos: int, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens (B, N) after a cached prompt, and the states (B, N - 1, D) of all but the
    last (the last token is never fed back). Rows that wrote `eos` continue with `pad`; the
    loop stops when every row has finished (one host sync per token, as any early stop needs).

    Without left padding (one observation, or prompts of one length) each token goes through
    the text model's decoder layers directly, with every step's rotary embedding computed
    before the loop: the model-level wrapper (mask construction, rotary, output records) is
    most of a small model's time per token, and one new token attending to the whole cache
    needs no mask. Padded batches go through the model's forward with their mask.
    """
    assert prompt.cache is not None, "greedy_decode needs a prompt pass with use_cache=True"
    batch = prompt.hidden.shape[0]
    last = prompt.hidden[:, -1]  # (B, D)
    mask = prompt.attention if not bool(prompt.attention.all()) else None
    step_fn = _decode_step(vlm, prompt, max_new_tokens) if mask is None else None
    finished = torch.zeros(batch, dtype=torch.bool, device=last.device)
    tokens: list[torch.Tensor] = []
    states: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        token = vlm.lm_head(last).argmax(-1).masked_fill(finished, pad)  # (B,)
        tokens.append(token)
        finished |= token == eos
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        if step_fn is not None:
            last = step_fn(token[:, None], step)  # (B, D)
        else:
            last = _text_step(vlm, prompt, token[:, None], mask, step)[:, -1]  # (B, D)
        states.append(last)
    empty = prompt.hidden.new_zeros(batch, 0, prompt.hidden.shape[-1])
    return torch.stack(tokens, 1), torch.stack(states, 1) if states else empty


def _decode_step(
    vlm: Qwen2VL, prompt: PromptPass, max_new_tokens: int
) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    """`step(token (B, 1), n) -> final state (B, D)` of the n-th new token after an unpadded
    cached prompt, through the decoder layers with rotary embeddings prepared for every step;
    None where the text model has sliding-window layers (they need their mask)."""
    text = vlm.model.language_model
    if text.has_sliding_layers:
        return None
    steps = torch.arange(max_new_tokens, device=prompt.hidden.device)
    positions = (prompt.next_position[:, None] + steps).expand(3, -1, -1)  # (3, B, N)
    cos, sin = text.rotary_emb(prompt.hidden, positions)  # (B, N, head_dim) each

    def step(token: torch.Tensor, n: int) -> torch.Tensor:
        hidden = text.embed_tokens(token)  # (B, 1, D)
        rope = (cos[:, n : n + 1], sin[:, n : n + 1])
        for layer in text.layers:
            hidden = layer(
                hidden,
                attention_mask=None,
                position_embeddings=rope,
                cache=prompt.cache,
                use_cache=True,
            )
        return text.norm(hidden)[:, -1]

    return step


def generate(
    vlm: Qwen2VL,
    prompts: PromptBuilder,
    tokens_per_image: list[int],
    instructions: list[str],
    vision: dict[str, torch.Tensor],
    max_new_tokens: int,
) -> Generation:
    """Prompt pass, greedy sub-steps, and both pooled spans, from one vision pass and prefill."""
    prompt = run_prompt(vlm, prompts, tokens_per_image, instructions, vision, use_cache=True)
    tokens, states = greedy_decode(vlm, prompt, max_new_tokens, prompts.im_end, prompts.pad_id)
    answers = prompts.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    texts = [prompts.parse_answer(answer) for answer in answers]
    # Training pools the sub-step's tokens as `answer_ids` writes them: those ids, in order.
    spans = [substep_ids(prompts, text) for text in texts]
    decoded = tokens.tolist()
    if (
        all(decoded[row][: len(ids)] == ids for row, ids in enumerate(spans))
        and max(map(len, spans)) <= states.shape[1]
    ):
        span = _span_mask(spans, states.shape[1], states.device)
        reasoning = masked_mean(states, span)  # (B, D)
    else:
        reasoning = _continue_with(vlm, prompt, spans, prompts.pad_id, decoded=tokens.shape[1] - 1)
    return Generation(texts, prompt.pooled, reasoning)


def substep_ids(prompts: PromptBuilder, text: str) -> list[int]:
    """The ids of a sub-step as training writes them (`reasoning_mask`'s span of `encode`)."""
    ids, n_reasoning = prompts.answer_ids(text)
    return ids[:n_reasoning]


def _span_mask(spans: list[list[int]], length: int, device: torch.device) -> torch.Tensor:
    """(B, length) bool, True on the first len(span) positions of each row."""
    sizes = torch.tensor([len(ids) for ids in spans], device=device)
    return torch.arange(length, device=device)[None] < sizes[:, None]


def _continue_with(
    vlm: Qwen2VL, prompt: PromptPass, spans: list[list[int]], pad: int, decoded: int
) -> torch.Tensor:
    """Pooled states (B, D) of `spans` run right after the cached prompt (the decoded tokens
    are dropped from the cache first)."""
    assert prompt.cache is not None
    if decoded:
        prompt.cache.crop(-decoded)
    batch, device = len(spans), prompt.hidden.device
    length = max(len(ids) for ids in spans)
    if length == 0:
        return prompt.hidden.new_zeros(batch, prompt.hidden.shape[-1])
    tokens = torch.full((batch, length), pad, dtype=torch.long)
    for row, ids in enumerate(spans):
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    span = _span_mask(spans, length, device)
    mask = torch.cat([prompt.attention, span.long()], dim=1)
    states = _text_step(vlm, prompt, tokens.to(device), mask, 0)  # (B, length, D)
    return masked_mean(states, span)


@functools.lru_cache(maxsize=16)
def ddim_schedule(config: DiffusionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM's sampling timesteps (T,) long and per-step coefficients (T, 4) fp32: sqrt(a),
    sqrt(1 - a), sqrt(a_prev), sqrt(1 - a_prev), as the scheduler `ActionDiffusion.sample`
    uses computes them (on the CPU).

    A function of the (frozen) configuration alone, so it is built once per configuration, not
    per chunk. Callers must not modify the returned tensors.
    """
    scheduler = make_scheduler(config)
    scheduler.set_timesteps(config.num_inference_steps)
    timesteps = scheduler.timesteps  # (T,) long
    previous = timesteps - config.num_train_timesteps // config.num_inference_steps
    alpha = scheduler.alphas_cumprod[timesteps]  # (T,) fp32
    alpha_prev = torch.where(
        previous >= 0,
        scheduler.alphas_cumprod[previous.clamp(min=0)],
        scheduler.final_alpha_cumprod,
    )
    coefficients = torch.stack(
        [alpha.sqrt(), (1 - alpha).sqrt(), alpha_prev.sqrt(), (1 - alpha_prev).sqrt()], dim=1
    )
    return timesteps, coefficients


def sample_actions(
    diffusion: ActionDiffusion,
    denoise: DenoiseFn,
    shape: tuple[int, int, int],
    device: torch.device,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Normalised actions (B, Hc, A) fp32 from pure noise: DDIM (eta 0) in fp32 torch maths.

    The same steps and clipping as `ActionDiffusion.sample` with the DDIM scheduler, and the same
    noise draw for a given generator; the coefficients live on `device` before the loop, so a
    step launches kernels only. A ScaleDP `Denoiser` gets the whole schedule first, so every
    step's adaLN outputs come from one batched pass. The model sees its input in `dtype`. Other
    schedulers run through `ActionDiffusion.sample`.
    """
    cfg = diffusion.config
    if cfg.scheduler != "ddim":
        return diffusion.sample(denoise, shape, device=device, generator=generator).float()
    timesteps, coefficients = ddim_schedule(cfg)
    coefficients = coefficients.to(device)  # (T, 4)
    batch_timesteps = timesteps.to(device)[:, None].expand(-1, shape[0])  # (T, B)
    if isinstance(denoise, Denoiser):
        steps = denoise.steps(batch_timesteps)
    else:
        steps = [lambda x, t=t: denoise(x, t) for t in batch_timesteps]
    rng_device = generator.device if generator is not None else device
    x = torch.randn(shape, generator=generator, device=rng_device, dtype=torch.float32).to(device)
    limit = cfg.clip_sample_range
    for step, (a, b, a_prev, b_prev) in zip(steps, coefficients, strict=True):
        out = step(x.to(dtype)).float()
        if cfg.prediction_type == "epsilon":
            x0, eps = (x - b * out) / a, out
        elif cfg.prediction_type == "sample":
            x0, eps = out, (x - a * out) / b
        else:  # v_prediction
            x0, eps = a * x - b * out, a * out + b * x
        if cfg.clip_sample:
            x0 = x0.clamp(-limit, limit)
        x = a_prev * x0 + b_prev * eps
    return x.clamp(-limit, limit) if cfg.clip_sample else x


def check_cached_reasoning(reasoning: Reasoning, size: int) -> None:
    """Refuse a cached `Reasoning` that does not fit a batch of `size` observations."""
    if len(reasoning.texts) != size:
        raise ValueError(
            f"reasoning holds {len(reasoning.texts)} sub-steps for {size} observations"
        )
    if not isinstance(reasoning.states, torch.Tensor):
        raise ValueError(
            "reasoning carries no pooled states: pass a Reasoning this policy returned"
        )
