"""Inference latency of a DexVLA policy on the CPU: chunks with and without reasoning, and
executed actions per second in the closed loop (policy time only, no simulator).

Rows, all measured in one run and interleaved (each repetition times every row once) so that
load from other processes hits every row alike; medians over `--reps`:

- chunk, reasoning regenerated: `predict_action_chunk(obs)` = greedy generation of the
  sub-step + one teacher-forced VLM pass + the diffusion expert's DDIM steps;
- chunk, cached reasoning: `predict_action_chunk(obs, reasoning)` = one prompt-only VLM pass +
  the DDIM steps;
- closed loop: `InferenceRuntime.step` over `--loop-steps` fresh observations, k actions
  executed per chunk, the sub-step regenerated every M chunks; actions/s = steps / time spent
  inside `step` (the simulator's time is excluded by construction).

Each row is given by wall clock and by this process's CPU time. With one thread on a quiet
machine the two agree; on a shared, loaded machine the CPU time is what the same run would
take alone (the wall time then mostly measures waiting for a core).

A random-weight model never writes `<|im_end|>`, so generation always runs to the preset's
`max_new_tokens` (24 for tiny): the reasoning rows are a worst case for a trained model.

    python bench/bench_inference.py                      # tiny, 1 thread, M in 1 2 4
    python bench/bench_inference.py --threads 2 --reasoning-every 1 4 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from dexvla.embodiments import get_embodiment
from dexvla.policy.configuration import get_policy_preset
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.policy.processor import DexVLAProcessor
from dexvla.runtime.inference import InferenceRuntime, RuntimeConfig
from dexvla.schema import EMBODIMENT, STATE, TASK, image_key
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    policy = make_policy(args.preset)
    obs = observations(args.loop_steps, args.image_size)
    _, reasoning = policy.predict_action_chunk(obs[0])  # warm-up
    policy.predict_action_chunk(obs[1], reasoning)

    rows: dict[str, list[tuple[float, float]]] = {"reasoning": [], "cached": [], "generate": []}
    loops: dict[int, list[tuple[float, float]]] = {m: [] for m in args.reasoning_every}
    for rep in range(args.reps):
        one = obs[rep % len(obs)]
        calls: dict[str, Callable[[], object]] = {
            "reasoning": lambda one=one: policy.predict_action_chunk(one),
            "cached": lambda one=one: policy.predict_action_chunk(one, reasoning),
            "generate": lambda one=one: policy.generate_reasoning(one),
        }
        for name, fn in calls.items():
            rows[name].append(timed(fn))
        for m in loops:
            loops[m].append(closed_loop(policy, obs, args.execute_steps, m))

    wall = {name: statistics.median(v[0] for v in values) for name, values in rows.items()}
    cpu = {name: statistics.median(v[1] for v in values) for name, values in rows.items()}
    config = policy.config
    print(
        f"preset {args.preset}: images {config.vlm.image_size} x3 cameras, "
        f"max_new_tokens {config.vlm.max_new_tokens}, chunk {config.chunk_size}, "
        f"DDIM steps {config.diffusion.num_inference_steps}, threads {args.threads}, "
        f"fp32 CPU, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"{'row':34} {'wall ms':>8} {'vs cached':>9} {'CPU ms':>8} {'vs cached':>9}")
    labels = {
        "reasoning": "chunk, reasoning regenerated",
        "cached": "chunk, cached reasoning",
        "generate": "generate_reasoning alone",
    }
    for name, label in labels.items():
        print(
            f"{label:34} {wall[name]:8.1f} {wall[name] / wall['cached']:8.2f}x "
            f"{cpu[name]:8.1f} {cpu[name] / cpu['cached']:8.2f}x"
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
