"""`dexvla train`: run one stage of the curriculum from a named stage preset plus overrides."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 84x84), got {text!r}") from None
    return height, width


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one stage of the DexVLA curriculum",
        description=(
            "Train stage 1 (expert alone), 2 (VLM + expert) or 3 (sub-step fine-tuning) from a "
            "stage preset (tiny-stage1..3, 2b-stage1..3; docs/training.md) with overrides. "
            "Writes checkpoints, metrics.jsonl, tensorboard/, loss_curve.png and final/ "
            "under --out."
        ),
    )
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    parser.add_argument("--preset", required=True, help="stage preset, e.g. tiny-stage2")
    parser.add_argument("--policy", help="replace the preset's policy preset (e.g. dexvla-2b-l)")
    parser.add_argument("--data", required=True, help="dataset directories, comma-separated")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--init", help="stage 2: a stage-1 final/; stage 3: a stage-2 final/")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--grad-accum", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--schedule", choices=("constant", "cosine"))
    parser.add_argument("--save-every", type=int)
    parser.add_argument("--keep-last", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--workers", type=int, dest="num_workers")
    parser.add_argument("--ema", type=float, help="EMA decay (final/ then holds EMA weights)")
    parser.add_argument("--precision", choices=("bf16", "no"))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--strategy", choices=("ddp", "fsdp"))
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute activations in the backward pass",
    )
    parser.add_argument("--llm", choices=("full", "frozen", "lora"))
    parser.add_argument("--lora-rank", type=int)
    parser.add_argument("--lora-alpha", type=int)
    parser.add_argument("--lora-dropout", type=float)
    parser.add_argument(
        "--freeze-vision",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="freeze the vision tower (the paper's choice and the 2b presets'; the tiny "
        "presets train it, as their vision tower starts from random weights)",
    )
    parser.add_argument("--data-weights", type=_floats, help="one weight per dataset: w1,w2")
    parser.add_argument("--embodiments", help="expert heads, comma-separated (default: preset's)")
    parser.add_argument("--image-size", type=_size, help="camera size HxW fed to Qwen2-VL")
    parser.add_argument("--llm-loss-weight", type=float)
    parser.add_argument(
        "--noise-samples",
        type=int,
        help="diffusion noise draws per observation in the loss (the VLM runs once for all)",
    )
    parser.add_argument(
        "--no-reasoning",
        dest="use_reasoning",
        action="store_false",
        default=None,
        help="ablation without sub-step reasoning",
    )
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    parser.set_defaults(func=run)


OVERRIDES = (
    "steps", "batch_size", "grad_accum", "lr", "warmup_steps", "schedule", "save_every",
    "keep_last", "log_every", "num_workers", "ema", "precision", "seed", "device", "strategy",
    "gradient_checkpointing", "llm", "lora_rank", "lora_alpha", "lora_dropout", "freeze_vision",
    "data_weights", "image_size", "llm_loss_weight", "use_reasoning", "noise_samples",
)  # fmt: skip


def stage_config_from_args(args: argparse.Namespace) -> Any:
    """The preset with the command line's overrides applied (validated)."""
    from dexvla.train.stages import get_stage_preset

    config = get_stage_preset(args.preset)
    if config.stage != args.stage:
        raise ValueError(
            f"preset {args.preset!r} is a stage-{config.stage} preset, not stage {args.stage}"
        )
    changes = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None}
    if args.policy is not None:
        changes["policy"] = args.policy
    if args.embodiments is not None:
        changes["embodiments"] = tuple(e.strip() for e in args.embodiments.split(",") if e.strip())
    return config.replace(**changes)


def run(args: argparse.Namespace) -> int:
    config = stage_config_from_args(args)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    from dexvla.train.stages import run_stage

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = [part.strip() for part in args.data.split(",") if part.strip()]
    final = run_stage(config, data, args.out, init=args.init, resume=args.resume)
    print(f"stage {config.stage} done: {final}")
    return 0
