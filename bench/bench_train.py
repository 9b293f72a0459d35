"""Training throughput of tiny stage 2: the forward before issue 13 vs today's, and the pipeline.

Everything is measured side by side in one run (this CPU is shared, so only ratios of runs made
next to each other mean something), on the same model, batch size and data:

- "bare old" / "bare new": forward + backward + clip + AdamW on one batch built once (prepared
  device tensors). "old" is `BaselinePolicy`, the training forward of the revision before
  issue 13 rebuilt from the same upstream classes: Qwen2-VL's `Qwen2VLImageProcessorPil`
  patchify in numpy on the host, upstream `get_rope_index` inside the forward, upstream's
  per-image vision attention and Conv3d patch embedding, a boolean-indexed language loss and
  `float()` metrics. "new" is `DexVLAPolicy` as it is.
- "pipeline": `Trainer` + DataLoader + `ChunkWindows` over a LeRobot v3 dataset (decoding,
  normalisation, collation, metrics, progress bar) with the new forward. Its overhead over the
  bare step around it has a target of <= 10%. The dataset has `--episodes` one-episode files,
  as a collected one has (50 in the demo), so random samples revisit files and row groups the
  way training does. "pipeline, old caches" is the same run with the reader's caches of before
  (16 open files, row groups barely kept: 8 of them, next to none under random access). With
  `--baseline`, "pipeline, old" has the old forward and the old caches: the training step as
  it was before issue 13 but for the loader, whose row-group reads then decoded 32 frames for
  one (slower still, so its ratio understates the gain).
- with `--compile`, "bare compiled": the new step after `DexVLAPolicy.compile_blocks()` (vision
  blocks, decoder layers and the expert's trunk through `torch.compile`), interleaved with the
  others; its compilation happens in the warm-up steps.
- the FLOP counter's GFLOP of one forward + backward, the achieved GFLOP/s of each bare step,
  and the fp32 2048^3 matmul GFLOP/s of the same run (what this CPU can do at best).

    nice .venv/bin/python bench/bench_train.py [--steps 30] [--repeats 3] [--baseline] [--compile]
"""

from __future__ import annotations

import argparse
import logging
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.modeling_qwen2_vl import PatchEmbed, VisionAttention

from dexvla.data.lerobot_v3 import LeRobotV3Writer, reader
from dexvla.data.windows import collate_windows
from dexvla.embodiments import get_embodiment
from dexvla.imaging import to_unit_float
from dexvla.policy.modeling import DexVLAPolicy, Encoding
from dexvla.policy.vlm import IGNORE_INDEX, masked_mean
from dexvla.schema import ACTION, ACTION_IS_PAD, STATE, SUBSTEP, TASK, Episode, image_key
from dexvla.train.engine import Trainer, move_to_device
from dexvla.train.metrics import read_metrics
from dexvla.train.optim import build_optimizer
from dexvla.train.recipes import get_stage_preset
from dexvla.train.stage_data import load_stage_data
from dexvla.train.stages import build_model


class BaselinePolicy(DexVLAPolicy):
    """`DexVLAPolicy` with the training forward before issue 13 (see the module docstring)."""

    upstream_images = Qwen2VLImageProcessorPil(do_resize=False, do_rescale=False)

    def vision_inputs(self, batch: dict[str, Any], embodiment: str) -> dict[str, torch.Tensor]:
        cams = get_embodiment(embodiment).cameras
        cameras = [self.processor.resize(batch[image_key(cam)]) for cam in cams]
        stacked = to_unit_float(torch.stack(cameras, dim=1).flatten(0, 1))  # (N, 3, h, w)
        images = np.ascontiguousarray(stacked.permute(0, 2, 3, 1).cpu().numpy())
        out = self.upstream_images(images=list(images), return_tensors="pt")
        return {
            "pixel_values": out["pixel_values"].to(self.device, self.vlm.dtype),
            "image_grid_thw": out["image_grid_thw"].to(self.device),
        }

    def encode(
        self,
        batch: dict[str, Any],
        embodiment: str,
        substeps: list[str],
        vision: dict[str, torch.Tensor] | None = None,
    ) -> Encoding:
        vision = vision or self.vision_inputs(batch, embodiment)
        tokens = self.prompts.encode(self._image_tokens(embodiment), list(batch[TASK]), substeps)
        input_ids = tokens.input_ids.to(self.device)
        hidden = self.vlm.model(  # no position_ids: upstream get_rope_index runs
            input_ids=input_ids,
            attention_mask=tokens.attention_mask.to(self.device),
            mm_token_type_ids=self.prompts.mm_token_type_ids(input_ids),
            use_cache=False,
            **vision,
        ).last_hidden_state
        return Encoding(
            hidden=hidden,
            labels=tokens.labels.to(self.device),
            prompt=masked_mean(hidden, tokens.prompt_mask.to(self.device)),
            reasoning=masked_mean(hidden, tokens.reasoning_mask.to(self.device)),
            answer_start=tokens.answer_start,
        )

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        embodiment = self.processor.batch_embodiment(batch)
        encoding = self.encode(batch, embodiment, list(batch[SUBSTEP]))
        labels = encoding.labels[:, 1:]
        answer = labels != IGNORE_INDEX
        logits = self.vlm.lm_head(encoding.hidden[:, :-1][answer])  # (N_answer, V)
        language_loss = F.cross_entropy(logits.float(), labels[answer])
        cond = self.fusion(encoding.prompt, encoding.reasoning).to(self.dtype)
        k = self.config.noise_samples
        actions = batch[ACTION].to(self.device, torch.float32).repeat(k, 1, 1)
        is_pad = batch[ACTION_IS_PAD].to(self.device).repeat(k, 1)
        state = batch[STATE].to(self.device, self.dtype).repeat(k, 1)
        denoise = self.expert.denoiser(cond.repeat(k, 1), state, embodiment)
        action_loss = self.diffusion.loss(denoise, actions, is_pad)
        loss = action_loss + self.config.llm_loss_weight * language_loss
        metrics = {
            "loss": float(loss.detach()),
            "action_loss": float(action_loss.detach()),
            "language_loss": float(language_loss.detach()),
        }
        return loss, metrics


def as_baseline(policy: DexVLAPolicy) -> BaselinePolicy:
    """The same policy (same weights, same frozen parts) with the old forward and vision tower."""
    policy.__class__ = BaselinePolicy
    visual = policy.vlm.model.visual
    visual.patch_embed.__class__ = PatchEmbed
    for block in visual.blocks:
        block.attn.__class__ = VisionAttention
    return policy


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


def matmul_gflops(size: int = 2048, repeats: int = 3) -> float:
    """fp32 GFLOP/s of a size^3 matrix product on this machine, now."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * size**3 / (time.perf_counter() - start) / 1e9


def step_gflop(model: torch.nn.Module, batch: dict) -> float:
    """GFLOP of one forward + backward, by `torch.utils.flop_counter`."""
    with FlopCounterMode(display=False) as counter:
        model(batch)[0].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def bare_samples_per_s(
    models: dict[str, torch.nn.Module], batch: dict, steps: int, warmup: int
) -> dict[str, float]:
    """Samples/s of forward + backward + clip + AdamW on one pre-built batch, for each model.

    The models' steps interleave (A B A B ...), so a change in machine load hits all alike.
    """
    config = get_stage_preset("tiny-stage2").train
    runs = {}
    for name, model in models.items():
        params = [p for p in model.parameters() if p.requires_grad]
        runs[name] = (model.train(), build_optimizer(model, config), params)
    seconds = dict.fromkeys(models, 0.0)
    for i in range(warmup + steps):
        for name, (model, optimizer, params) in runs.items():
            start = time.perf_counter()
            loss, _ = model(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= warmup:
                seconds[name] += time.perf_counter() - start
    return {name: steps * len(batch[TASK]) / s for name, s in seconds.items()}


def pipeline_samples_per_s(
    model: torch.nn.Module, data, config, out: Path, warmup: int, old_caches: bool = False
) -> float:
    """Steady-state samples/s of `Trainer.train` (the first log window, start-up, excluded),
    on a fresh copy of the dataset after one sparse pass over it (every 16th sample: the
    steady state of a long run, whose caches are warm after its first few hundred samples),
    with the old reader caches if asked."""
    kept = (reader.OPEN_FILES, reader.GROUP_CACHE_BYTES)
    if old_caches:
        reader.OPEN_FILES, reader.GROUP_CACHE_BYTES = 16, 0
    try:
        dataset = pickle.loads(pickle.dumps(data.dataset))  # caches rebuilt, as in a worker
        for i in range(0, len(dataset), 16):
            dataset[i]
        Trainer(model, dataset, config.train, out, collate_fn=collate_windows).train()
    finally:
        reader.OPEN_FILES, reader.GROUP_CACHE_BYTES = kept
    windows = [r for r in read_metrics(out / "metrics.jsonl") if r["step"] > warmup]
    return float(np.mean([r["samples_per_s"] for r in windows]))


def row(name: str, values: list[float], unit: str) -> str:
    return f"{name:<22}" + " ".join(f"{v:7.2f}" for v in values) + f"  {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image", type=int, default=84, help="stored camera size (px)")
    parser.add_argument("--episodes", type=int, default=50, help="one-episode files")
    parser.add_argument("--length", type=int, default=40, help="frames per episode")
    parser.add_argument(
        "--data", type=Path, help="an ALOHA LeRobot v3 data set to read instead (e.g. collected)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="pipeline runs, between bare runs")
    parser.add_argument("--baseline", action="store_true", help="pipeline of the old forward too")
    parser.add_argument("--compile", action="store_true", help="a compiled bare step too")
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
        if args.data is not None:
            root = args.data
        else:
            root = write_dataset(Path(tmp) / "data", args.episodes, args.length, args.image)
        data = load_stage_data([root], config, config.policy_config())
        samples = [data.dataset[i] for i in range(args.batch_size)]
        batch = move_to_device(collate_windows(samples), torch.device("cpu"))

        def fresh(old: bool = False, compiled: bool = False) -> torch.nn.Module:
            torch.manual_seed(0)
            model = build_model(config, data, None)[0]
            if compiled:
                model.compile_blocks()
            return as_baseline(model) if old else model

        with torch.random.fork_rng():
            torch.manual_seed(1)
            old_loss = float(fresh(old=True)(batch)[0].detach())
            torch.manual_seed(1)
            new_loss = float(fresh()(batch)[0].detach())
        gflop = step_gflop(fresh(), batch)
        matmul = [matmul_gflops()]

        # Bare runs (old and new steps interleaved) alternate with pipeline runs, and each
        # pipeline run is compared with the mean of the bare runs around it, so a change in
        # machine load (the CPU is shared) does not pass for a speed-up or an overhead.
        def bare() -> dict[str, float]:
            models = {"old": fresh(old=True), "new": fresh()}
            if args.compile:
                models["compiled"] = fresh(compiled=True)
            return bare_samples_per_s(models, batch, args.steps, args.warmup)

        bares = [bare()]
        pipeline: list[float] = []
        pipeline_old: list[float] = []
        pipeline_caches: list[float] = []
        for i in range(args.repeats):
            pipeline.append(
                pipeline_samples_per_s(fresh(), data, config, Path(tmp) / f"new{i}", args.warmup)
            )
            out = Path(tmp) / f"caches{i}"
            pipeline_caches.append(
                pipeline_samples_per_s(fresh(), data, config, out, args.warmup, old_caches=True)
            )
            if args.baseline:
                out = Path(tmp) / f"old{i}"
                pipeline_old.append(
                    pipeline_samples_per_s(
                        fresh(old=True), data, config, out, args.warmup, old_caches=True
                    )
                )
            bares.append(bare())
            matmul.append(matmul_gflops())

    batch_size = args.batch_size
    old, new = [b["old"] for b in bares], [b["new"] for b in bares]
    speedups = [n / o for n, o in zip(new, old, strict=True)]
    overheads = [(new[i] + new[i + 1]) / 2 / pipeline[i] - 1.0 for i in range(args.repeats)]
    print(
        f"tiny stage 2, batch {batch_size}, noise_samples {config.noise_samples}, "
        f"{args.steps} steps x {args.repeats}, workers {args.workers}, threads {args.threads}, "
        f"{args.image}px x3 cameras -> {config.policy_config().vlm.image_size[0]}px, "
        + (
            f"data {args.data}"
            if args.data
            else f"{args.episodes} one-episode files of {args.length} frames (random images)"
        )
    )
    print(f"first loss, same weights and noise: old {old_loss:.6f}  new {new_loss:.6f}")
    print(f"forward + backward: {gflop:.2f} GFLOP per step (FlopCounterMode)")
    print(row("matmul 2048^3", matmul, "GFLOP/s"))
    print(row("bare step, old", old, "samples/s"))
    print(row("bare step, new", new, "samples/s"))
    print(row("  achieved, new", [gflop * v / batch_size for v in new], "GFLOP/s"))
    print(row("pipeline, new", pipeline, "samples/s"))
    print(row("pipeline, old caches", pipeline_caches, "samples/s"))
    cache_gain = [p / q for p, q in zip(pipeline, pipeline_caches, strict=True)]
    print(row("new / old caches", cache_gain, f"x  median {statistics.median(cache_gain):.2f}x"))
    if pipeline_old:
        print(row("pipeline, old", pipeline_old, "samples/s"))
        ratios = [p / q for p, q in zip(pipeline, pipeline_old, strict=True)]
        print(row("pipeline new / old", ratios, f"x  median {statistics.median(ratios):.2f}x"))
    print(row("bare new / old", speedups, f"x  median {statistics.median(speedups):.2f}x"))
    if args.compile:
        gains = [b["compiled"] / b["new"] for b in bares]
        print(row("bare compiled", [b["compiled"] for b in bares], "samples/s"))
        print(row("compiled / new", gains, f"x  median {statistics.median(gains):.2f}x"))
    print(
        "pipeline overhead:    "
        + " ".join(f"{100 * v:+6.1f}%" for v in overheads)
        + f"  median {100 * statistics.median(overheads):+.1f}% (target <= +10%)"
    )


if __name__ == "__main__":
    main()
