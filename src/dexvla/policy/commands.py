"""`dexvla models`: list every preset with its parameter count."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list model presets and their parameter counts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dexvla.policy.configuration import describe_presets

    rows = describe_presets()
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="dexvla presets (parameters counted on the meta device)")
    for column in ("name", "kind", "parameters", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"], row["kind"], f"{row['parameters'] / 1e6:,.1f}M", row["description"]
        )
    Console().print(table)
    return 0
