"""Record scripted demonstrations into a LeRobot v3 dataset, in parallel and resumably.

Seeds: the i-th candidate is `seed + i`. Only successful episodes are written; a failed seed is
remembered in `<out>/dexvla_collect.json` and the next seed is tried instead, so a finished run
holds exactly `episodes` successful demonstrations and every stored episode carries its seed.
Re-running skips seeds already in the dataset (or known to fail) and collects only what is
missing. Parallel workers' episodes are written in seed order, as one worker's would be, so a
dataset does not depend on which worker finished first. One dataset directory holds one task.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dexvla.io import atomic_write_json, read_json
from dexvla.schema import Episode
from dexvla.sim.registry import ImageSize, get_task, make_env, make_expert
from dexvla.sim.rollout import run_expert

STATE_FILE = "dexvla_collect.json"
WORKER_ENV = {"MUJOCO_GL": "egl", "LP_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


@dataclass
class CollectReport:
    """What a collection run did."""

    task: str
    out: Path
    new_episodes: int = 0
    total_episodes: int = 0
    frames: int = 0
    failed_seeds: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _configure_process() -> None:
    """Rendering and threading settings for a collecting process (before any GL context)."""
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


_WORKER_CACHE: dict[tuple[str, ImageSize], tuple] = {}


def record(task_name: str, seed: int, image_size: ImageSize) -> Episode:
    """Record one episode, reusing this process's environment for the task."""
    key = (task_name, image_size)
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = (make_env(task_name, image_size=image_size), make_expert(task_name))
    env, expert = _WORKER_CACHE[key]
    episode, _ = run_expert(env, expert, get_task(task_name), seed)
    return episode


def _load_state(out: Path, task_name: str) -> list[int]:
    path = out / STATE_FILE
    if not path.exists():
        return []
    state = read_json(path, "collection state")
    if state.get("task") != task_name:
        raise ValueError(
            f"{out} holds task {state.get('task')!r}, not {task_name!r}: one task per dataset"
        )
    return [int(s) for s in state.get("failed_seeds", [])]


def _save_state(out: Path, task_name: str, failed: list[int]) -> None:
    atomic_write_json(out / STATE_FILE, {"task": task_name, "failed_seeds": sorted(failed)})


def collect(
    task_name: str,
    *,
    episodes: int,
    out: Path,
    workers: int = 1,
    seed: int = 0,
    image_size: ImageSize = 128,
    max_attempts: int | None = None,
    progress: bool = True,
) -> CollectReport:
    """Collect until `out` holds `episodes` successful demonstrations of `task_name`.

    `max_attempts` caps the new seeds tried (default: twice the missing episodes plus 10), so a
    broken expert cannot loop forever. `workers` > 1 runs a process pool.
    """
    from dexvla.data.lerobot_v3 import LeRobotV3Writer

    spec = get_task(task_name)
    if episodes < 0 or workers < 1:
        raise ValueError(f"episodes must be >= 0 and workers >= 1, got {episodes}, {workers}")
    out = Path(out)
    failed = _load_state(out, task_name)
    _configure_process()
    report = CollectReport(task=task_name, out=out, failed_seeds=list(failed))
    start = time.perf_counter()
    with LeRobotV3Writer(out, embodiment=spec.embodiment, fps=spec.fps) as writer:
        _save_state(out, task_name, failed)
        skip = writer.completed_seeds() | set(failed)
        need = max(0, episodes - writer.num_episodes)
        budget = max_attempts if max_attempts is not None else 2 * need + 10
        candidates = (s for s in itertools.count(seed) if s not in skip)
        bar = tqdm(total=need, desc=task_name, unit="ep", disable=not progress)

        def handle(candidate: int, episode: Episode) -> None:
            if episode.success and report.new_episodes < need:
                writer.add_episode(episode)
                report.new_episodes += 1
                report.frames += len(episode)
                bar.update(1)
            elif not episode.success:
                report.failed_seeds.append(candidate)
                _save_state(out, task_name, report.failed_seeds)
                bar.set_postfix(failed=len(report.failed_seeds) - len(failed))

        attempts = 0
        if workers == 1:
            while report.new_episodes < need and attempts < budget:
                candidate = next(candidates)
                attempts += 1
                handle(candidate, record(task_name, candidate, image_size))
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, context, initializer=_configure_process) as pool:
                running: dict[Future, int] = {}
                finished: dict[int, Episode] = {}  # done, waiting for an earlier seed
                while True:
                    while (
                        report.new_episodes + len(running) + len(finished) < need
                        and len(running) < 2 * workers
                        and attempts < budget
                    ):
                        candidate = next(candidates)
                        attempts += 1
                        running[pool.submit(record, task_name, candidate, image_size)] = candidate
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        finished[running.pop(future)] = future.result()
                    # In seed order, whatever timing: a dataset does not depend on which
                    # worker finished first.
                    first_running = min(running.values(), default=math.inf)
                    for candidate in sorted(c for c in finished if c < first_running):
                        handle(candidate, finished.pop(candidate))
        bar.close()
        report.total_episodes = writer.num_episodes
    report.seconds = time.perf_counter() - start
    return report
