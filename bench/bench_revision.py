"""This checkout against an older revision's own code, run alternately on the same machine.

The speed issue's figures are ratios to the code at a given revision (`7d197a4` by default),
not to a rebuilt copy of its passes. This script checks that revision out in a git worktree
and times both revisions with the same command, alternating (old, new, old, new, ...) so
that load from other processes hits both alike; each revision runs its own `src/` under the
same interpreter and packages.

- `train`: `dexvla train --stage 2 --preset tiny-stage2` for `--steps` steps on `--data` (a
  collected ALOHA LeRobot v3 data set both revisions read), from scratch; the figure is the
  mean samples/s of the log windows after the first (start-up, compilation and cold caches
  excluded). `--new-args` adds flags to this checkout's command only (e.g. `--compile`).
- `inference`: each revision's own `bench/bench_inference.py` (random tiny weights); the
  figures are its wall ms for a chunk with the sub-step regenerated and with it cached.

Ratios are new / old per alternation, then their median.

    python bench/bench_revision.py train --data DATA [--rev 7d197a4] [--repeats 2]
    python bench/bench_revision.py train --data DATA --new-args=--compile
    python bench/bench_revision.py inference [--rev 7d197a4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench_inference.py's row labels at 7d197a4 and now: label -> figure name
INFERENCE_ROWS = {
    "chunk, reasoning regenerated": "reasoning ms",
    "chunk, reasoning regenerated, new": "reasoning ms",
    "chunk, cached reasoning": "cached ms",
    "chunk, cached reasoning, new": "cached ms",
}


def run(tree: Path, command: list[str], threads: int, cwd: Path) -> str:
    """`command` with `tree`'s src first on the path and `threads` torch threads; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{tree.name}: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def train_rate(tree: Path, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Steady-state samples/s of a from-scratch tiny stage-2 run of `tree`'s code."""
    dexvla = Path(sys.executable).with_name("dexvla")
    command = [str(dexvla), "train", "--stage", "2", "--preset", "tiny-stage2"]
    command += ["--data", str(args.data.resolve()), "--out", str(out), "--steps", str(args.steps)]
    command += ["--log-every", str(args.log_every), "--save-every", str(10 * args.steps)]
    if tree == ROOT:
        command += args.new_args.split()
    run(tree, command, args.threads, cwd=tree)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [row["samples_per_s"] for row in rows if "samples_per_s" in row][1:]
    if not rates:
        raise SystemExit(f"{out}: no log window after the first; raise --steps")
    return {"samples/s": statistics.mean(rates)}


def inference_ms(tree: Path, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Wall ms of the chunk rows of `tree`'s own bench_inference.py."""
    command = [sys.executable, "bench/bench_inference.py", "--reps", str(args.reps)]
    command += ["--reasoning-every", "1", "--loop-steps", "16", "--threads", str(args.threads)]
    figures = {}
    for line in run(tree, command, args.threads, cwd=tree).splitlines():
        label = re.split(r"\s{2,}", line.strip())[0]
        if label in INFERENCE_ROWS:
            figures[INFERENCE_ROWS[label]] = float(line[len(label) :].split()[0])
    if len(figures) != 2:
        raise SystemExit(f"{tree.name}: bench_inference.py printed no chunk rows")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("train", "inference"))
    parser.add_argument("--rev", default="7d197a4", help="the older revision (default 7d197a4)")
    parser.add_argument("--repeats", type=int, default=2, help="alternations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, help="train: an ALOHA LeRobot v3 data set")
    parser.add_argument("--steps", type=int, default=200, help="train: steps per run")
    parser.add_argument("--log-every", type=int, default=50, help="train: steps per log window")
    parser.add_argument("--reps", type=int, default=9, help="inference: timings per row")
    parser.add_argument(
        "--new-args", default="", help="train: flags for this checkout only (e.g. --compile)"
    )
    args = parser.parse_args()
    if args.mode == "train" and (args.data is None or not args.data.is_dir()):
        parser.error("train needs --data: a collected data set directory")
    measure = train_rate if args.mode == "train" else inference_ms

    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.rev],
            check=True,
            capture_output=True,
        )
        try:
            results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
            for i in range(args.repeats):
                for name, tree in (("old", old), ("new", ROOT)):
                    figures = measure(tree, args, Path(tmp) / f"{name}{i}")
                    results[name].append(figures)
                    print(f"{name} ({args.rev if name == 'old' else 'HEAD'}) run {i}: {figures}")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                check=False,
                capture_output=True,
            )
    print(f"\n{args.mode}, {args.threads} thread(s), HEAD against {args.rev}, new / old:")
    for key in results["new"][0]:
        ratios = [n[key] / o[key] for n, o in zip(results["new"], results["old"], strict=True)]
        listed = " ".join(f"{r:.2f}" for r in ratios)
        print(f"  {key:<14} {listed}  median {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
