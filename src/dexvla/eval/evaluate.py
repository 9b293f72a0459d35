"""`evaluate`: N seeded closed-loop episodes of one task, resumable, in one or more processes.

Episode i starts from seed `seed + i`. The default first seed, 100000, is far from the seeds
`dexvla collect` uses by default (0, 1, 2, ...), so evaluation states are not training states.

Output directory:
- `episodes.jsonl`: one JSON line per finished episode, appended as each finishes. A re-run with
  the same `--out` and the same configuration skips the episodes already there.
- `eval_info.json`: the configuration and the summary so far (rewritten after every episode).
- `videos/episode_XXXX.mp4` for the first `videos` episodes, `plots/episode_XXXX_{timeline,
  actions}.png` for the first `max(videos, 1)`, and `report.html` linking them all.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dexvla.eval import DEFAULT_EVAL_SEED, report
from dexvla.eval.rollout import RuntimePolicy, ScriptedPolicy, run_episode
from dexvla.io import atomic_write_json, atomic_write_text, read_json
from dexvla.runtime.device import resolve_device, resolve_dtype
from dexvla.schema import IMAGE_PREFIX

EPISODES_FILE = "episodes.jsonl"
INFO_FILE = "eval_info.json"
POLICIES = ("checkpoint", "scripted")
# Fields that change what an episode produces: a resumed run must match them.
IDENTITY = (
    "task",
    "policy",
    "checkpoint",
    "seed",
    "max_steps",
    "image_size",
    "execute_steps",
    "ensemble",
    "reasoning_every",
    "async_reasoning",
)


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation. `checkpoint` is required for `policy="checkpoint"`.

    max_steps: episode limit (default: the task's). threads: torch threads per process (None
    leaves torch's default). videos: how many episodes (the first ones) get an mp4. device,
    dtype: where the policy runs (`dexvla.runtime.device`; "auto": CUDA + bf16, else CPU + fp32).
    """

    task: str
    episodes: int
    out: Path
    checkpoint: Path | None = None
    policy: str = "checkpoint"
    seed: int = DEFAULT_EVAL_SEED
    workers: int = 1
    videos: int = 1
    execute_steps: int = 16
    ensemble: bool = False
    reasoning_every: int = 1
    async_reasoning: bool = False
    max_steps: int | None = None
    image_size: int | tuple[int, int] = 128
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    progress: bool = True

    def validate(self) -> None:
        """Fail early, with a clear message, on anything that would fail inside a worker."""
        from dexvla.sim.registry import get_task

        spec = get_task(self.task)
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        for name in ("episodes", "workers", "execute_steps", "reasoning_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.videos < 0:
            raise ValueError(f"videos must be >= 0, got {self.videos}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        resolve_dtype(self.dtype, resolve_device(self.device))
        if self.policy == "checkpoint":
            from dexvla.policy.checkpoint import CONFIG_NAME, read_checkpoint_config

            if self.checkpoint is None:
                raise ValueError("--checkpoint is required unless --policy scripted")
            try:
                config = read_checkpoint_config(self.checkpoint)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"checkpoint {self.checkpoint} not found (no {CONFIG_NAME})"
                ) from None
            try:
                embodiments = config["expert"]["embodiments"]
            except (KeyError, TypeError):
                raise ValueError(
                    f"checkpoint {self.checkpoint}: {CONFIG_NAME} is not a dexvla policy config "
                    "(no expert.embodiments)"
                ) from None
            if spec.embodiment not in embodiments:
                raise ValueError(
                    f"checkpoint {self.checkpoint} serves {sorted(embodiments)}, "
                    f"but task {self.task!r} needs embodiment {spec.embodiment!r}"
                )

    def identity(self) -> dict[str, Any]:
        """The JSON-safe fields that define the results (compared on resume)."""
        data = {key: getattr(self, key) for key in IDENTITY}
        data["checkpoint"] = str(Path(self.checkpoint).resolve()) if self.checkpoint else None
        data["image_size"] = (
            list(self.image_size) if isinstance(self.image_size, tuple) else (self.image_size)
        )
        data["max_steps"] = self.resolved_max_steps()
        if self.policy == "scripted":
            for key in ("execute_steps", "ensemble", "reasoning_every", "async_reasoning"):
                data[key] = None
        return data

    def resolved_max_steps(self) -> int:
        from dexvla.sim.registry import get_task

        limit = get_task(self.task).max_steps
        return min(self.max_steps, limit) if self.max_steps else limit


# -------------------------------------------------------------------- worker side

_WORKER: dict[str, Any] = {}


def _init_worker(config: EvalConfig) -> None:
    """Build this process's environment and policy once (each worker loads the checkpoint)."""
    import torch

    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    from dexvla.runtime.inference import RuntimeConfig
    from dexvla.sim.registry import get_task, make_env, make_expert

    spec = get_task(config.task)
    env = make_env(config.task, image_size=config.image_size)
    if config.policy == "scripted":
        policy: Any = ScriptedPolicy(make_expert(config.task))
    else:
        from dexvla.policy.modeling import DexVLAPolicy

        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        model = DexVLAPolicy.from_pretrained(config.checkpoint, dtype=dtype, device=device)
        runtime = RuntimeConfig(
            mode="ensemble" if config.ensemble else "chunk",
            execute_steps=config.execute_steps,
            reasoning_every=config.reasoning_every,
            async_reasoning=config.async_reasoning,
        )
        policy = RuntimePolicy(model, runtime)
    _WORKER.update(config=config, spec=spec, env=env, policy=policy)


def _close_worker() -> None:
    if _WORKER:
        _WORKER["policy"].close()
        _WORKER["env"].close()
        _WORKER.clear()


def _run_one(index: int) -> dict[str, Any]:
    """Run episode `index` in this worker, write its video and plots, return its record."""
    config: EvalConfig = _WORKER["config"]
    spec = _WORKER["spec"]
    cameras = None

    def frame(obs: dict[str, Any], substep: str, t: int) -> Any:
        nonlocal cameras
        if cameras is None:
            cameras = sorted(k for k in obs if k.startswith(IMAGE_PREFIX))
        return report.annotate_frame([obs[k] for k in cameras], substep, t)

    with_video = index < config.videos
    result = run_episode(
        _WORKER["env"],
        _WORKER["policy"],
        spec,
        index=index,
        seed=config.seed + index,
        max_steps=config.resolved_max_steps(),
        frame_fn=frame if with_video else None,
    )
    record = result.summary()
    artefacts: dict[str, str] = {}
    out = Path(config.out)
    name = f"episode_{index:04d}"
    if result.frames:
        report.write_video(out / "videos" / f"{name}.mp4", result.frames, spec.fps)
        artefacts["video"] = f"videos/{name}.mp4"
    if index < max(config.videos, 1):
        report.plot_timeline(result, out / "plots" / f"{name}_timeline.png")
        report.plot_actions(result, out / "plots" / f"{name}_actions.png")
        artefacts["timeline"] = f"plots/{name}_timeline.png"
        artefacts["actions"] = f"plots/{name}_actions.png"
    record["artefacts"] = artefacts
    return record


# -------------------------------------------------------------------- driver side


def load_records(out: Path) -> list[dict[str, Any]]:
    """Finished episodes recorded in `out/episodes.jsonl`; a torn last line is dropped."""
    path = out / EPISODES_FILE
    if not path.is_file():
        return []
    text = path.read_text()
    records, good = [], []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
            good.append(line)
        except json.JSONDecodeError:
            continue
    if len(good) != len(text.splitlines()) or (text and not text.endswith("\n")):
        atomic_write_text(path, "".join(g + "\n" for g in good))
    return records


def _append_record(out: Path, record: dict[str, Any]) -> None:
    with open(out / EPISODES_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _check_resume(out: Path, config: EvalConfig) -> None:
    path = out / INFO_FILE
    if not path.is_file():
        if (out / EPISODES_FILE).is_file():
            raise ValueError(f"{out} holds {EPISODES_FILE} but no {INFO_FILE}; use a new --out")
        return
    try:
        previous = read_json(path, "evaluation info")["config"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is unreadable ({error}); use a new --out") from None
    mine = config.identity()
    changed = {k: (previous.get(k), v) for k, v in mine.items() if previous.get(k) != v}
    if changed:
        details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(
            f"{out} holds an evaluation with a different configuration ({details}); "
            "use another --out or the same settings to resume"
        )


def _write_info(config: EvalConfig, records: list[dict[str, Any]], status: str) -> dict:
    wanted = sorted(
        (r for r in records if r["episode"] < config.episodes), key=lambda r: r["episode"]
    )
    info = {
        "status": status,
        "config": {**config.identity(), "episodes": config.episodes, "workers": config.workers},
        "summary": report.summarize(wanted),
        "episodes": [{k: v for k, v in r.items() if k != "timeline"} for r in wanted],
    }
    atomic_write_json(Path(config.out) / INFO_FILE, info)
    return info


def check_cameras(checkpoint: Path, task: str) -> None:
    """Refuse a simulator whose cameras' fields of view differ from the training data's.

    The checkpoint's stats.json carries them where the data recorded them; a policy trained at
    another field of view sees every object at another scale and fails for no visible reason.
    """
    from dexvla.policy.checkpoint import STATS_NAME
    from dexvla.sim.registry import get_task, task_camera_fovy
    from dexvla.stats import DatasetStats, fovy_differs

    path = Path(checkpoint) / STATS_NAME
    if not path.is_file():
        return
    embodiment = get_task(task).embodiment
    trained = DatasetStats.load(path).camera_fovy.get(embodiment, {})
    if not trained:
        return
    rendered = task_camera_fovy(task)
    for cam, fovy in sorted(trained.items()):
        if cam in rendered and fovy_differs(rendered[cam], fovy):
            raise ValueError(
                f"checkpoint {checkpoint} was trained on camera {cam!r} at a {fovy:g} degree "
                f"field of view, but task {task!r} renders it at {rendered[cam]:g} degrees: "
                "re-collect the data with this version and train again"
            )


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Run (or resume) the evaluation; return eval_info (config, summary, episodes)."""
    config.validate()
    if config.policy == "checkpoint":
        assert config.checkpoint is not None
        check_cameras(config.checkpoint, config.task)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, config)
    records = load_records(out)
    done = {r["episode"] for r in records}
    todo = [i for i in range(config.episodes) if i not in done]
    _write_info(config, records, "running")
    start = time.perf_counter()
    bar = tqdm(
        total=config.episodes,
        initial=config.episodes - len(todo),
        desc=f"eval {config.task}",
        unit="ep",
        disable=not config.progress,
    )

    def finish(record: dict[str, Any]) -> None:
        records.append(record)
        _append_record(out, record)
        _write_info(config, records, "running")
        finished = [r for r in records if r["episode"] < config.episodes]
        bar.update(1)
        bar.set_postfix(success=f"{sum(r['success'] for r in finished)}/{len(finished)}")

    try:
        if todo and config.workers == 1:
            _init_worker(config)
            try:
                for index in todo:
                    finish(_run_one(index))
            finally:
                _close_worker()
        elif todo:
            with ProcessPoolExecutor(
                max_workers=min(config.workers, len(todo)),
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(config,),
            ) as pool:
                futures = [pool.submit(_run_one, index) for index in todo]
                for future in as_completed(futures):
                    finish(future.result())
    finally:
        bar.close()
    info = _write_info(config, records, "complete")
    info["wall_s"] = time.perf_counter() - start
    wanted = [r for r in records if r["episode"] < config.episodes]
    report.write_report(out, info, wanted)
    return info
