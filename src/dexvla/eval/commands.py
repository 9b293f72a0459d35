"""`dexvla eval`: closed-loop evaluation of a checkpoint (or the scripted expert) in a task."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dexvla.eval import DEFAULT_EVAL_SEED
from dexvla.runtime.device import add_device_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="closed-loop evaluation in a simulated task, with videos and a report"
    )
    parser.add_argument("--checkpoint", type=Path, help="policy directory (save_pretrained)")
    parser.add_argument("--task", required=True, help="task name (see `dexvla tasks`)")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_EVAL_SEED,
        help=f"episode i starts from seed SEED+i (default {DEFAULT_EVAL_SEED}, far from the "
        "collection seeds 0, 1, ...)",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel episode processes")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default eval/<task>)")
    parser.add_argument(
        "--policy",
        choices=("checkpoint", "scripted"),
        default="checkpoint",
        help="the checkpoint, or the task's scripted expert (a sanity ceiling)",
    )
    parser.add_argument("--videos", type=int, default=2, help="mp4s of the first V episodes")
    parser.add_argument(
        "--execute-steps", type=int, default=16, help="k: actions executed per chunk (default 16)"
    )
    parser.add_argument(
        "--ensemble", action="store_true", help="temporal ensembling (a chunk every k steps)"
    )
    parser.add_argument(
        "--reasoning-every", type=int, default=1, help="M: regenerate the sub-step every M chunks"
    )
    parser.add_argument(
        "--async-reasoning", action="store_true", help="regenerate the sub-step in background"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="episode limit override")
    parser.add_argument("--image-size", default="128", help="N or HxW camera size (default 128)")
    add_device_arguments(parser)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per process (default 1 if K>1)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from dexvla.eval.evaluate import EvalConfig, evaluate
    from dexvla.sim.registry import parse_image_size

    size = parse_image_size(args.image_size)
    threads = args.threads if args.threads is not None else (1 if args.workers > 1 else None)
    config = EvalConfig(
        task=args.task,
        episodes=args.episodes,
        out=args.out or Path("eval") / args.task,
        checkpoint=args.checkpoint,
        policy=args.policy,
        seed=args.seed,
        workers=args.workers,
        videos=args.videos,
        execute_steps=args.execute_steps,
        ensemble=args.ensemble,
        reasoning_every=args.reasoning_every,
        async_reasoning=args.async_reasoning,
        max_steps=args.max_steps,
        image_size=size[0] if size[0] == size[1] else size,
        device=args.device,
        dtype=args.dtype,
        threads=threads,
        progress=not args.no_progress and not args.json,
    )
    info = evaluate(config)
    summary = info["summary"]
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    low, high = summary["success_ci95"]
    print(
        f"{args.task} ({args.policy}): success {summary['successes']}/{summary['episodes']} = "
        f"{summary['success_rate']:.3f}  [Wilson 95%: {low:.3f}, {high:.3f}]"
    )
    for stage, entry in summary.get("stage_reached", {}).items():
        print(f"  stage {stage} {entry['name']:>20}: {entry['fraction']:.2f}")
    latency = summary.get("latency", {})
    if latency.get("chunk_ms_mean") is not None:
        print(
            f"  policy: {latency['chunk_ms_mean']:.1f} ms/chunk, "
            f"{latency['step_ms_mean']:.2f} ms/step, "
            f"{latency['actions_per_s_policy_only']:.1f} actions/s (policy time only)"
        )
    print(f"  report: {os.path.join(config.out, 'report.html')}")
    return 0
