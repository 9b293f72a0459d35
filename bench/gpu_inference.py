"""Chunk latency of the full-size `dexvla-2b` policy (Qwen2-VL-2B + ScaleDP-H) on one GPU.

Random weights in bf16, built from the preset's architecture on the device: nothing is
downloaded. Qwen2-VL-2B's real vocabulary size (151,936) and LM head are kept, so generation
costs what it would with the real model; the prompt's token ids come from the project's tiny
tokenizer (it carries Qwen's special tokens, at other ids, which the model config is pointed
at), since only the ids' count matters for timing. A random model never writes `<|im_end|>`,
so every generation runs exactly `--new-tokens` tokens: pick what a trained model writes for a
sub-step (about 10-16 tokens; the preset allows 64).

Rows (CUDA-synchronised, medians over `--reps`, interleaved):
- chunk with reasoning: generate the sub-step + one teacher-forced pass + 10 DDIM steps;
- chunk with cached reasoning: one prompt-only VLM pass + 10 DDIM steps;
against the targets <= 60 ms and <= 20 ms on one H100.

    python bench/gpu_inference.py                    # dexvla-2b, bf16, cuda, 12 new tokens
    python bench/gpu_inference.py --new-tokens 12 24 64 --reps 10

Exits with status 0 and a message when CUDA is absent. Takes about a minute on an H100.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from transformers import Qwen2VLForConditionalGeneration

from dexvla.embodiments import get_embodiment
from dexvla.policy.configuration import get_policy_preset
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.policy.processor import DexVLAProcessor
from dexvla.policy.tokenizer import load_tiny_tokenizer
from dexvla.policy.vlm import qwen2vl_config
from dexvla.schema import EMBODIMENT, STATE, TASK, image_key
from dexvla.stats import DatasetStats

TARGETS_MS = {"reasoning": 60.0, "cached": 20.0}
QWEN2_VL_VOCAB = 151_936


def build_policy(preset: str, new_tokens: int, device: str, dtype: torch.dtype) -> DexVLAPolicy:
    """The preset with random weights on `device`, its prompt ids from the tiny tokenizer."""
    config = get_policy_preset(preset)
    config = config.replace(vlm=dataclasses.replace(config.vlm, max_new_tokens=new_tokens))
    tokenizer = load_tiny_tokenizer()
    vlm_config = qwen2vl_config(config.vlm, tokenizer=None)
    ids = tokenizer.convert_tokens_to_ids(
        ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
    )
    for name, value in zip(
        ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"),
        ids,
        strict=True,
    ):
        setattr(vlm_config, name, value)
    if vlm_config.text_config.vocab_size != QWEN2_VL_VOCAB:
        # dexvla-2b records 151,936; a preset without a vocabulary gets Qwen2-VL-2B's too.
        vlm_config.text_config.vocab_size = QWEN2_VL_VOCAB
    rng = np.random.default_rng(0)
    stats = DatasetStats.from_arrays(
        "aloha", rng.normal(size=(64, 14)), rng.uniform(-1.0, 1.0, size=(64, 14))
    )
    processor = DexVLAProcessor(config.vlm.image_size, config.embodiments, stats)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            vlm = Qwen2VLForConditionalGeneration(vlm_config)
            policy = DexVLAPolicy(config, processor=processor, tokenizer=tokenizer, vlm=vlm)
    finally:
        torch.set_default_dtype(previous)
    return policy.to(device=device, dtype=dtype).eval()


def observation(size: tuple[int, int], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    spec = get_embodiment("aloha")
    obs = {image_key(cam): rng.integers(0, 256, (*size, 3), dtype=np.uint8) for cam in spec.cameras}
    obs[STATE] = rng.normal(size=spec.state_dim).astype(np.float32)
    obs[TASK] = "pick up the red cube and hand it over to the left arm"
    obs[EMBODIMENT] = "aloha"
    return obs


def timed_ms(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="dexvla-2b")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[12, 64])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=480, help="camera frames (px)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_inference: CUDA is not available here; nothing measured.")
        return 0
    dtype = getattr(torch, args.dtype)
    policy = build_policy(args.preset, max(args.new_tokens), args.device, dtype)
    obs = observation((args.image_size, args.image_size))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    vlm = policy.config.vlm
    print(
        f"{args.preset} on {name}, {args.dtype}: images {vlm.image_size} x3 cameras, chunk "
        f"{policy.config.chunk_size}, DDIM steps {policy.config.diffusion.num_inference_steps}, "
        f"vocab {policy.vlm.config.text_config.vocab_size}"
    )
    print(f"{'row':42} {'median ms':>10} {'p90 ms':>8} {'target':>8}")
    with torch.inference_mode():
        _, reasoning = policy.predict_action_chunk(obs)
        for _ in range(2):
            policy.predict_action_chunk(obs, reasoning)
        cached: list[float] = []
        with_reasoning: dict[int, list[float]] = {n: [] for n in args.new_tokens}
        for _ in range(args.reps):
            for n in args.new_tokens:
                policy.config = policy.config.replace(
                    vlm=dataclasses.replace(policy.config.vlm, max_new_tokens=n)
                )
                with_reasoning[n].append(
                    timed_ms(lambda: policy.predict_action_chunk(obs), args.device)
                )
            cached.append(
                timed_ms(lambda: policy.predict_action_chunk(obs, reasoning), args.device)
            )
    for n, values in with_reasoning.items():
        _row(f"chunk with reasoning ({n} new tokens)", values, TARGETS_MS["reasoning"])
    _row("chunk with cached reasoning", cached, TARGETS_MS["cached"])
    if args.device.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


def _row(label: str, values: list[float], target: float) -> None:
    median = statistics.median(values)
    p90 = float(np.percentile(values, 90))
    verdict = "ok" if median <= target else "MISS"
    print(f"{label:42} {median:10.1f} {p90:8.1f} {'<=' + str(int(target)):>6} {verdict}")


if __name__ == "__main__":
    sys.exit(main())
