"""How close a ScaleDP denoising step gets to this machine's fp32 matmul peak (CPU).

One step = one forward of the expert at batch 1 on a 50-step chunk, fp32, `inference_mode`.
FLOPs are counted analytically: 2*M*K*N for every linear layer (M = 50 tokens for the
token-wise layers, M = batch for the conditioning layers and the adaLN modulations) plus
4*L^2*D per block for attention (QK^T and AV); norms, activations, softmax and adds are not
counted. The peak is a 2048^3 fp32 matmul timed in the same run, and so is the "M=50 ceiling":
the expert's own MLP up-projection (50 x D x 4D) alone. Timings are medians, measured
interleaved so that load from other processes hits every row alike.

    python bench/bench_scaledp.py                      # tiny, B, L; eager
    python bench/bench_scaledp.py --compile            # also torch.compile'd, side by side
    python bench/bench_scaledp.py --presets scaledp-l --threads 1 --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dexvla.policy.configuration import EXPERT_PRESETS, count_expert_parameters
from dexvla.policy.scaledp import ScaleDP, ScaleDPConfig


def step_flops(config: ScaleDPConfig, embodiment: str, batch: int, steps: int) -> int:
    """Multiply-add FLOPs (x2) of one ScaleDP forward, from the config alone."""
    D, L, M = config.width, steps, config.mlp_dim
    action_dim, state_dim = config.embodiments[embodiment]
    per_token = 2 * L * (action_dim * D + D * action_dim)  # input and output projections
    per_token += config.depth * (
        2 * L * D * 3 * D  # QKV
        + 4 * L * L * D  # QK^T and AV
        + 2 * L * D * D  # attention output
        + 2 * 2 * L * D * M  # MLP up and down
    )
    per_sample = 2 * state_dim * config.state_embed_dim
    per_sample += 2 * (config.cond_dim + config.state_embed_dim) * D + 2 * D * D  # cond MLP
    per_sample += 2 * config.time_freq_dim * D + 2 * D * D  # timestep MLP
    per_sample += config.depth * 2 * D * 6 * D + 2 * D * 2 * D  # adaLN modulations
    return batch * (per_token + per_sample)


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["scaledp-tiny", "scaledp-b", "scaledp-l"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    cases: dict[str, tuple[Callable[[], object], int]] = {
        "matmul 2048^3": (lambda: a @ b, 2 * 2048**3)
    }
    for name in args.presets:
        config = EXPERT_PRESETS[name]
        embodiment = next(iter(config.embodiments))
        action_dim, state_dim = config.embodiments[embodiment]
        model = ScaleDP(config).eval()
        inputs = (
            torch.randn(1, args.chunk, action_dim),
            torch.tensor([50]),
            torch.randn(1, config.cond_dim),
            torch.randn(1, state_dim),
            embodiment,
        )
        flops = step_flops(config, embodiment, 1, args.chunk)
        x = torch.randn(args.chunk, config.width)
        w = torch.randn(config.mlp_dim, config.width)
        bias = torch.zeros(config.mlp_dim)
        d, m = config.width, config.mlp_dim
        cases[f"linear {args.chunk}x{d}x{m}"] = (
            lambda x=x, w=w, bias=bias: F.linear(x, w, bias),
            2 * args.chunk * d * m,
        )
        cases[f"{name} eager"] = (lambda model=model, inputs=inputs: model(*inputs), flops)
        if args.compile:
            compiled = torch.compile(model)
            with torch.inference_mode():
                compiled(*inputs)  # compile outside the timed rounds
            cases[f"{name} compile"] = (
                lambda compiled=compiled, inputs=inputs: compiled(*inputs),
                flops,
            )
        params = count_expert_parameters(config)
        print(f"{name}: {params / 1e6:.1f}M params, {flops / 1e9:.2f} GFLOP/step")

    seconds: dict[str, list[float]] = {key: [] for key in cases}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for key, (fn, _) in cases.items():
                seconds[key].append(median_seconds(fn, args.reps))

    peak = 2 * 2048**3 / statistics.median(seconds["matmul 2048^3"])
    print(f"\nthreads={args.threads}  chunk={args.chunk}  batch=1  fp32  torch {torch.__version__}")
    print(f"{'case':<28}{'ms':>10}{'GFLOP/s':>10}{'of peak':>9}")
    for key, (_, flops) in cases.items():
        t = statistics.median(seconds[key])
        print(f"{key:<28}{t * 1e3:>10.2f}{flops / t / 1e9:>10.1f}{flops / t / peak:>9.0%}")


if __name__ == "__main__":
    main()
