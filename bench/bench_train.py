"""Training throughput: the real stage-2 pipeline vs a bare optimiser step on one batch.

Both sides train the same tiny stage-2 policy (vision tower frozen, as the preset says) with
the same batch size. "pipeline" is `Trainer` + DataLoader + `ChunkWindows` over a LeRobot v3
dataset (PNG decoding, normalisation, collation, metrics, progress bar); "bare" is
forward + backward + clip + AdamW on a batch built once. The ratio is what data loading and
bookkeeping cost; the target is <= 10%.

    .venv/bin/python bench/bench_train.py [--steps 30] [--batch-size 8] [--workers 0]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dexvla.data.lerobot_v3 import LeRobotV3Writer
from dexvla.data.windows import collate_windows
from dexvla.embodiments import get_embodiment
from dexvla.schema import Episode
from dexvla.train.engine import Trainer
from dexvla.train.metrics import read_metrics
from dexvla.train.optim import build_optimizer
from dexvla.train.recipes import get_stage_preset
from dexvla.train.stage_data import load_stage_data
from dexvla.train.stages import build_model


def write_dataset(root: Path, episodes: int, length: int, size: int) -> Path:
    spec = get_embodiment("aloha")
    rng = np.random.default_rng(0)
    with LeRobotV3Writer(root, embodiment="aloha", fps=spec.fps) as writer:
        for e in range(episodes):
            action = rng.normal(size=(length, 14)).astype(np.float32).cumsum(0) * 0.05
            images = {
                cam: rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8)
                for cam in spec.cameras
            }
            substeps = [f"step {3 * t // length}" for t in range(length)]
            writer.add_episode(
                Episode("aloha", "transfer the cube", images, action, action, substeps, seed=e)
            )
    return root


def bare_samples_per_s(model: torch.nn.Module, batch: dict, steps: int, warmup: int) -> float:
    """Samples/s of forward + backward + clip + AdamW on one pre-built batch."""
    config = get_stage_preset("tiny-stage2").train
    optimizer = build_optimizer(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss, _ = model(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * len(batch["task"]) / (time.perf_counter() - start)


def pipeline_samples_per_s(model: torch.nn.Module, data, config, out: Path, warmup: int) -> float:
    """Steady-state samples/s of `Trainer.train` (the first log window, start-up, excluded)."""
    Trainer(model, data.dataset, config.train, out, collate_fn=collate_windows).train()
    windows = [r for r in read_metrics(out / "metrics.jsonl") if r["step"] > warmup]
    return float(np.mean([r["samples_per_s"] for r in windows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image", type=int, default=96, help="stored camera size (px)")
    parser.add_argument("--repeats", type=int, default=3, help="pipeline runs, between bare runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    config = get_stage_preset("tiny-stage2").replace(
        batch_size=args.batch_size,
        steps=args.warmup + args.steps,
        log_every=args.warmup,
        save_every=10**6,
        num_workers=args.workers,
        tensorboard=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp) / "data", episodes=4, length=60, size=args.image)
        data = load_stage_data([root], config, config.policy_config())
        batch = collate_windows([data.dataset[i] for i in range(args.batch_size)])

        def fresh() -> torch.nn.Module:
            torch.manual_seed(0)
            return build_model(config, data, None)[0]

        # Bare and pipeline runs alternate (B P B P ... B), and each pipeline run is compared
        # with the mean of the bare runs around it, so a change in machine load between runs
        # (this CPU is shared) does not pass for overhead.
        bare = [bare_samples_per_s(fresh(), batch, args.steps, args.warmup)]
        pipeline: list[float] = []
        for i in range(args.repeats):
            out = Path(tmp) / f"run{i}"
            pipeline.append(pipeline_samples_per_s(fresh(), data, config, out, args.warmup))
            bare.append(bare_samples_per_s(fresh(), batch, args.steps, args.warmup))
    overheads = [(bare[i] + bare[i + 1]) / 2 / pipeline[i] - 1.0 for i in range(args.repeats)]
    print(
        f"tiny stage 2, batch {args.batch_size}, {args.steps} steps x {args.repeats}, "
        f"workers {args.workers}, threads {args.threads}, {args.image}px x3 cameras -> "
        f"{config.policy_config().vlm.image_size[0]}px"
    )
    print("bare step:  " + " ".join(f"{v:6.2f}" for v in bare) + " samples/s")
    print("pipeline:   " + " ".join(f"{v:6.2f}" for v in pipeline) + " samples/s")
    print(
        "overhead:   "
        + " ".join(f"{100 * v:+5.1f}%" for v in overheads)
        + f"  median {100 * float(np.median(overheads)):+.1f}% (target <= +10%)"
    )


if __name__ == "__main__":
    main()
