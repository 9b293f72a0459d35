"""Inference latency of a DexVLA policy on the CPU: chunks with and without reasoning, and
executed actions per second in the closed loop (policy time only, no simulator).

Rows, all measured in one run and interleaved (each repetition times every row once) so that
load from other processes hits every row alike; medians over `--reps`. Each chunk row is timed
for the old sequence of passes (what `predict_action_chunk` did before issue 13) and the new one,
with the ratio new / old:

- chunk, reasoning regenerated. Old: vision + `vlm.generate` (Hugging Face's loop), then a
  teacher-forced `encode` over prompt + sub-step (vision and prompt again), then the diffusers
  DDIM sampler. New: `predict_action_chunk(obs)` = one vision pass, one prompt prefill and the
  greedy decoding, whose states give both pooled spans, then DDIM in torch maths;
- chunk, cached reasoning. Old: vision + `encode` of prompt + empty answer + diffusers DDIM.
  New: `predict_action_chunk(obs, reasoning)` = one prompt pass + torch DDIM;
- closed loop: `InferenceRuntime.step` over `--loop-steps` fresh observations, k actions
  executed per chunk, the sub-step regenerated every M chunks; actions/s = steps / time spent
  inside `step` (the simulator's time is excluded by construction).

Each row is given by wall clock and by this process's CPU time. With one thread on a quiet
machine the two agree; on a shared, loaded machine the CPU time is what the same run would
take alone (the wall time then mostly measures waiting for a core).

A random-weight model never writes `<|im_end|>`, so generation always runs to the preset's
`max_new_tokens` (24 for tiny): the reasoning rows are a worst case for a trained model.
`--checkpoint` times a trained policy instead (e.g. `make demo`'s stage-3 policy), and `--data`
feeds it the frames of a recorded data set: its decoding stops where its sub-step ends.

    python bench/bench_inference.py                      # tiny, 1 thread, M in 1 2 4
    python bench/bench_inference.py --threads 2 --reasoning-every 1 4 8
    python bench/bench_inference.py --checkpoint <demo>/runs/.../stage3/final \
        --data <demo>/data/aloha-transfer-cube-50ep-84px
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dexvla.data.lerobot_v3 import LeRobotV3Dataset
from dexvla.embodiments import get_embodiment
from dexvla.policy.configuration import get_policy_preset
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.policy.processor import DexVLAProcessor
from dexvla.runtime.inference import InferenceRuntime, RuntimeConfig
from dexvla.schema import EMBODIMENT, STATE, TASK, Reasoning, image_key
from dexvla.stats import DatasetStats

TARGET_ACTIONS_PER_S = 60.0


def make_policy(preset: str) -> DexVLAPolicy:
    """The preset with random weights and ALOHA statistics (no download, no checkpoint)."""
    torch.manual_seed(0)
    config = get_policy_preset(preset)
    rng = np.random.default_rng(0)
    stats = DatasetStats.from_arrays(
        "aloha", rng.normal(size=(64, 14)), rng.uniform(-1.0, 1.0, size=(64, 14))
    )
    processor = DexVLAProcessor(config.vlm.image_size, config.embodiments, stats)
    return DexVLAPolicy(config, processor=processor).eval()


def recorded_observations(root: Path, n: int) -> list[dict]:
    """`n` observations from a recorded data set's frames (every episode in turn, spread over
    its length), as the simulator gave them."""
    data = LeRobotV3Dataset(root)
    return [
        data.observation(
            k % data.num_episodes,
            (k // data.num_episodes * 37) % data.episode_length(k % data.num_episodes),
        )
        for k in range(n)
    ]


def observations(n: int, size: int, seed: int = 0) -> list[dict]:
    """ALOHA observations with random camera images of `size` px, as the simulator gives."""
    rng = np.random.default_rng(seed)
    spec = get_embodiment("aloha")
    out = []
    for _ in range(n):
        obs = {
            image_key(cam): rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            for cam in spec.cameras
        }
        obs[STATE] = rng.normal(size=spec.state_dim).astype(np.float32)
        obs[TASK] = "pick up the red cube and hand it over to the left arm"
        obs[EMBODIMENT] = "aloha"
        out.append(obs)
    return out


@torch.no_grad()
def old_chunk(policy: DexVLAPolicy, obs: dict, reasoning: Reasoning | None) -> np.ndarray:
    """The sequence of passes `predict_action_chunk` ran before issue 13 (kept to compare)."""
    batch, embodiment = policy.processor.prepare(obs)
    vision = policy.vision_inputs(batch, embodiment)
    if reasoning is None:
        input_ids, attention = policy.prompts.encode_prompts(
            [policy.config.vlm.tokens_per_image] * len(get_embodiment(embodiment).cameras),
            list(batch[TASK]),
        )
        generated = policy.vlm.generate(
            input_ids=input_ids,
            attention_mask=attention,
            mm_token_type_ids=policy.prompts.mm_token_type_ids(input_ids),
            max_new_tokens=policy.config.vlm.max_new_tokens,
            do_sample=False,
            eos_token_id=policy.prompts.im_end,
            pad_token_id=policy.prompts.pad_id,
            **vision,
        )
        answers = policy.tokenizer.batch_decode(
            generated[:, input_ids.shape[1] :], skip_special_tokens=True
        )
        texts = [policy.prompts.parse_answer(text) for text in answers]
        encoding = policy.encode(batch, embodiment, texts, vision)
        prompt, states = encoding.prompt, encoding.reasoning
    else:
        prompt, states = policy.encode(batch, embodiment, [""], vision).prompt, reasoning.states
    cond = policy.fusion(prompt, states)
    normalised = policy.diffusion.sample(
        policy.expert.denoiser(cond, batch[STATE], embodiment),
        (1, policy.config.chunk_size, get_embodiment(embodiment).action_dim),
        device="cpu",
    )
    return policy.processor.unnormalize_actions(normalised.numpy(), embodiment)[0]


def closed_loop(policy: DexVLAPolicy, obs: list[dict], k: int, every: int) -> tuple[float, float]:
    """Executed actions per second over `obs`, counting only the time inside `step`: by wall
    clock and by this process's CPU time."""
    runtime = InferenceRuntime(policy, RuntimeConfig(execute_steps=k, reasoning_every=every))
    wall = cpu = 0.0
    for one in obs:
        start, start_cpu = time.perf_counter(), time.process_time()
        runtime.step(one)
        wall += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    return len(obs) / wall, len(obs) / cpu


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU milliseconds of one call."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - start) * 1e3, (time.process_time() - start_cpu) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="policy preset (random weights)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per chunk timing")
    parser.add_argument("--execute-steps", type=int, default=16, help="k (default 16)")
    parser.add_argument(
        "--reasoning-every", type=int, nargs="+", default=[1, 2, 4], help="M values to compare"
    )
    parser.add_argument(
        "--loop-steps", type=int, default=128, help="control steps per closed-loop run"
    )
    parser.add_argument("--image-size", type=int, default=128, help="camera image size (px)")
    parser.add_argument("--checkpoint", type=Path, help="a trained policy instead of --preset")
    parser.add_argument("--data", type=Path, help="observations from this data set's frames")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.checkpoint is not None:
        policy = DexVLAPolicy.from_pretrained(args.checkpoint).eval()
    else:
        policy = make_policy(args.preset)
    if args.data is not None:
        obs = recorded_observations(args.data, args.loop_steps)
    else:
        obs = observations(args.loop_steps, args.image_size)
    _, reasoning = policy.predict_action_chunk(obs[0])  # warm-up
    policy.predict_action_chunk(obs[1], reasoning)

    old_chunk(policy, obs[0], None)  # warm-up of the old path
    old_chunk(policy, obs[1], reasoning)
    names = ("reasoning", "reasoning (old)", "cached", "cached (old)", "generate")
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    loops: dict[int, list[tuple[float, float]]] = {m: [] for m in args.reasoning_every}
    for rep in range(args.reps):
        one = obs[rep % len(obs)]
        calls: dict[str, Callable[[], object]] = {
            "reasoning": lambda one=one: policy.predict_action_chunk(one),
            "reasoning (old)": lambda one=one: old_chunk(policy, one, None),
            "cached": lambda one=one: policy.predict_action_chunk(one, reasoning),
            "cached (old)": lambda one=one: old_chunk(policy, one, reasoning),
            "generate": lambda one=one: policy.generate_reasoning(one),
        }
        for name, fn in calls.items():
            rows[name].append(timed(fn))
        for m in loops:
            loops[m].append(closed_loop(policy, obs, args.execute_steps, m))

    wall = {name: statistics.median(v[0] for v in values) for name, values in rows.items()}
    cpu = {name: statistics.median(v[1] for v in values) for name, values in rows.items()}
    config = policy.config
    source = f"checkpoint {args.checkpoint}" if args.checkpoint else f"preset {args.preset}"
    frames = f", frames of {args.data}" if args.data else ", random images"
    print(
        f"{source}{frames}: images {config.vlm.image_size} x3 cameras, "
        f"max_new_tokens {config.vlm.max_new_tokens}, chunk {config.chunk_size}, "
        f"DDIM steps {config.diffusion.num_inference_steps}, threads {args.threads}, "
        f"fp32 CPU, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"{'row':34} {'wall ms':>8} {'vs old':>7} {'CPU ms':>8} {'vs old':>7}")
    labels = {
        "reasoning (old)": "chunk, reasoning regenerated, old",
        "reasoning": "chunk, reasoning regenerated, new",
        "cached (old)": "chunk, cached reasoning, old",
        "cached": "chunk, cached reasoning, new",
        "generate": "generate_reasoning alone, new",
    }
    for name, label in labels.items():
        base = name.split(" ")[0]
        old = f"{base} (old)" if f"{base} (old)" in wall else name
        print(
            f"{label:34} {wall[name]:8.1f} {wall[name] / wall[old]:6.2f}x "
            f"{cpu[name]:8.1f} {cpu[name] / cpu[old]:6.2f}x"
        )
    print(
        f"\nclosed loop, k={args.execute_steps}, {args.loop_steps} steps (runtime.step time only)"
    )
    print(f"{'reasoning every M chunks':34} {'actions/s wall':>14} {'actions/s CPU':>14} target")
    for m, values in loops.items():
        rate = statistics.median(v[0] for v in values)
        rate_cpu = statistics.median(v[1] for v in values)
        verdict = "ok" if rate >= TARGET_ACTIONS_PER_S else "MISS"
        print(f"{'M = ' + str(m):34} {rate:14.1f} {rate_cpu:14.1f} {verdict:>6} (wall)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
