"""Measure the scripted experts' success rates: `python -m dexvla.sim.check --episodes 50`.

Runs without rendering (the experts do not look at images) on seeds 0..N-1 and prints one
Markdown table row per task, with the failing seeds.
"""

from __future__ import annotations

import argparse
import time

from dexvla.sim.registry import list_tasks
from dexvla.sim.rollout import expert_succeeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tasks", nargs="*", help="task names (default: the featured tasks)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    args = parser.parse_args(argv)

    names = args.tasks or [t.name for t in list_tasks(featured_only=True)]
    print("| task | successes | seconds | failed seeds |\n|---|---|---|---|")
    for name in names:
        start = time.perf_counter()
        results = expert_succeeds(name, range(args.seed, args.seed + args.episodes))
        failed = [seed for seed, ok in results.items() if not ok]
        print(
            f"| {name} | {len(results) - len(failed)}/{len(results)} "
            f"| {time.perf_counter() - start:.0f} | {failed or ''} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
