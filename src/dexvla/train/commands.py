"""`dexvla train`: run one stage of the curriculum from a named stage preset plus overrides.

Every override flag comes from an `option` field of `StageConfig` (and of the `TrainConfig`
it holds): the field declares the flag once, and a flag given on the command line replaces
that field of the preset.
"""

from __future__ import annotations

import argparse
import json
import logging

from dexvla.train.config import option_flags
from dexvla.train.recipes import STAGE_RECIPES, StageConfig, get_stage_preset


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
    parser.add_argument("--stage", type=int, choices=tuple(STAGE_RECIPES), required=True)
    parser.add_argument("--preset", required=True, help="stage preset, e.g. tiny-stage2")
    parser.add_argument("--data", required=True, help="dataset directories, comma-separated")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--init", help="stage 2: a stage-1 final/; stage 3: a stage-2 final/")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    for name, flag in option_flags(StageConfig):
        parser.add_argument(flag.flag_name(name), dest=name, default=None, **flag.kwargs)
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    parser.set_defaults(func=run)


def stage_config_from_args(args: argparse.Namespace) -> StageConfig:
    """The preset with the command line's overrides applied (validated)."""
    config = get_stage_preset(args.preset)
    if config.stage != args.stage:
        raise ValueError(
            f"preset {args.preset!r} is a stage-{config.stage} preset, not stage {args.stage}"
        )
    changes = {
        name: getattr(args, name)
        for name, _ in option_flags(StageConfig)
        if getattr(args, name) is not None
    }
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
