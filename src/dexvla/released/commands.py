"""`dexvla convert-released-expert`: the authors' ScaleDP-H / -L file -> a stage-1 artefact."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-released-expert",
        help="convert the authors' released ScaleDP expert into a stage-1 artefact",
        description=(
            "Read a released stage-1 expert (a .ckpt holding ['nets']['nets'], read with "
            "torch.load(weights_only=True), or a .safetensors of that dict) and write a "
            "stage-1 artefact for `dexvla train --stage 2 --init DIR` (docs/released.md)."
        ),
    )
    parser.add_argument("src", help="the released .ckpt or .safetensors file")
    parser.add_argument("--out", required=True, help="the artefact directory to write")
    parser.add_argument(
        "--heads", type=int, default=16, help="attention heads (not in the file; released: 16)"
    )
    parser.add_argument(
        "--embodiment", default="aloha", help="the embodiment whose head the released head is"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import logging

    from dexvla.released.convert import convert_released_expert
    from dexvla.train.stage1 import read_stage1_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = convert_released_expert(args.src, args.out, heads=args.heads, embodiment=args.embodiment)
    expert = read_stage1_config(out)["expert"]
    summary = {k: expert[k] for k in ("depth", "width", "heads", "cond_dim", "chunk_size")}
    print(f"wrote {out}: {json.dumps(summary)}")
    return 0
