"""The runner and the checks of `bench/kill_resume.py`, each independent of the loader it checks
(a checkpoint is complete when its manifest's sizes match and every tensor reads back)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open

POINTS = Path(__file__).with_name("kill_points.py")
CKPT_FILE = r"/checkpoints/\.step-\d+\.tmp-[^/]+/"  # a file written into a checkpoint's staging
CKPT_RENAME = r"/checkpoints/step-\d+$"  # the staging directory renamed into place
EXPORT = r"/(\.final\.tmp-[^/]+/|final$)"  # the final/ export
RLIMIT_BYTES = 1 << 20  # above every JSON file and log of a tiny run, below every tensor file
RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")


@dataclass
class Result:
    rc: int
    err: str
    events: list[str]
    killed: str | None  # the event it was killed at
    after_kill: bool  # the run before it was killed

    @property
    def resumed_from(self) -> Path | None:
        match = RESUMED.search(self.err)
        return Path(match.group(1)).resolve() if match else None


@dataclass
class Runner:
    """Runs `dexvla` through kill_points.py in a new session; kills what is left of its group."""

    work: Path
    pending: bool = False
    count: int = 0

    def dexvla(
        self,
        args: list[str],
        *,
        kill_at: str | None = None,
        log: bool = False,
        preexec: Callable[[], None] | None = None,
    ) -> Result:
        self.count += 1
        events = self.work / f"events-{self.count}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "KILL_AT": ""}
        env.update(KILL_AT=kill_at or "", KILL_LOG=str(events) if log or kill_at else "")
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(
                [sys.executable, str(POINTS), *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )
            try:
                rc = proc.wait(timeout=900)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # workers a dead leader left
                proc.wait()
            err.seek(0)
            text = err.read()
        lines = events.read_text().splitlines() if events.is_file() else []
        killed = next((line[7:] for line in lines if line.startswith("KILLED ")), None)
        return Result(rc, text, lines, killed, self.pending)

    def ok(self, args: list[str], log: bool = False) -> Result:
        result = self.dexvla(args, log=log)
        if result.rc != 0:
            raise RuntimeError(f"dexvla {' '.join(args)} failed:\n{result.err[-3000:]}")
        return result

    def mark_kill(self, killed: str | None) -> None:
        self.pending = killed is not None


def count_events(events: list[str], steps: int, save_every: int) -> dict[str, int]:
    """Files per checkpoint save and writes of the final export, in a reference run's log."""
    saves = sum(1 for s in range(1, steps + 1) if s % save_every == 0 or s == steps)
    files = sum(1 for e in events if e.startswith("replace ") and re.search(CKPT_FILE, e))
    export = sum(1 for e in events if e.startswith("replace ") and re.search(EXPORT, e))
    backward = sum(1 for e in events if e.startswith("backward"))
    if backward != steps:
        raise RuntimeError(f"expected {steps} backward passes in the reference, saw {backward}")
    return {"files": files // saves, "export": export}


def complete(path: Path) -> bool:
    """The manifest's files at their sizes, every JSON parsed, every tensor read."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        for name, size in manifest["files"].items():
            if (path / name).stat().st_size != size:
                return False
            if name.endswith(".json"):
                json.loads((path / name).read_text())
            if name.endswith(".safetensors"):
                with safe_open(str(path / name), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                        f.get_tensor(key)
    except Exception:  # any failure to read is incomplete
        return False
    return True


@dataclass
class CheckpointsState:
    step: int = 0
    path: Path | None = None
    complete: bool = True
    partial: int = 0  # staging directories and step dirs that are not complete
    bytes: int = 0  # of the newest complete one


def checkpoints_state(root: Path) -> CheckpointsState:
    state = CheckpointsState()
    if not root.is_dir():
        return state
    for path in sorted(root.iterdir()):
        match = re.fullmatch(r"step-(\d+)", path.name)
        if match and complete(path):
            if int(match.group(1)) > state.step:
                state.step, state.path = int(match.group(1)), path.resolve()
        elif path.is_dir():
            state.partial += 1
    if state.path is not None:
        state.bytes = sum(f.stat().st_size for f in state.path.iterdir())
    return state


def compare_tensors(a: Path, b: Path) -> tuple[int, int, float]:
    """Tensors bit-identical, tensors in all, the largest absolute difference of the rest."""
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    if x.keys() != y.keys():
        return 0, len(x), float("inf")
    same, worst = 0, 0.0
    for key, value in x.items():
        other = y[key]
        if value.dtype == other.dtype and value.shape == other.shape and value.equal(other):
            same += 1
        elif value.shape == other.shape:
            worst = max(worst, (value.double() - other.double()).abs().max().item())
        else:
            worst = float("inf")
    return same, len(x), worst


def metrics_steps(run: Path) -> dict[int, float]:
    """Logged step -> loss of a run's metrics.jsonl (a duplicated step shows as a mismatch)."""
    out: dict[int, float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"] if record["step"] not in out else float("nan")
    return out


def dataset_check(ref: Path, out: Path) -> dict[str, object]:
    """Episodes lost, duplicated or torn, against the uninterrupted collection."""
    from dexvla.data.lerobot_v3 import LeRobotV3Dataset
    from dexvla.io import is_temp

    try:
        mine = LeRobotV3Dataset(out)
    except Exception as error:  # the figure is whether it loads at all
        return {"dataset loads (LeRobotV3Dataset)": f"no: {error}"}
    theirs = LeRobotV3Dataset(ref)
    seeds = [int(row["dexvla/seed"]) for row in mine.rows]
    by_seed = {int(row["dexvla/seed"]): i for i, row in enumerate(theirs.rows)}
    torn = 0
    for i, seed in enumerate(seeds):
        try:
            episode, good = mine.episode(i), theirs.episode(by_seed[seed])
            same = np.array_equal(episode.action, good.action) and all(
                np.array_equal(episode.images[c], good.images[c]) for c in good.images
            )
        except Exception:
            same = False
        torn += int(not same)
    files = list((out / "data").rglob("*.parquet"))
    temps = [p for p in out.rglob(".*") if is_temp(p)]
    return {
        "dataset loads (LeRobotV3Dataset)": "yes",
        "episodes (uninterrupted)": f"{len(seeds)} ({len(theirs.rows)})",
        "episodes lost": len(set(by_seed) - set(seeds)),
        "episodes duplicated": len(seeds) - len(set(seeds)),
        "episodes torn or differing": torn,
        "orphan data files / temp files left": f"{len(files) - len(seeds)} / {len(temps)}",
    }


def eval_check(ref: Path, out: Path, episodes: int) -> dict[str, object]:
    """`episodes.jsonl` and `eval_info.json` against the uninterrupted evaluation."""
    keys = ("episode", "seed", "success", "success_step", "steps", "total_reward", "max_reward")

    def records(run: Path) -> tuple[list[dict], int]:
        lines = (run / "episodes.jsonl").read_text().splitlines()
        good = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                good.append(json.loads(line))
        return good, len(lines) - len(good)

    mine, bad = records(out)
    theirs = {r["episode"]: r for r in records(ref)[0]}
    indices = [r["episode"] for r in mine]
    info = json.loads((out / "eval_info.json").read_text())
    differ = sum(any(r[k] != theirs.get(r["episode"], {}).get(k) for k in keys) for r in mine)
    return {
        "episodes.jsonl lines unparsable": bad,
        "episodes lost": len(set(range(episodes)) - set(indices)),
        "episodes recorded twice": len(indices) - len(set(indices)),
        "records differing from uninterrupted": differ,
        "eval_info.json complete, all episodes": info["status"] == "complete"
        and len(info["episodes"]) == episodes,
    }


@dataclass
class DiskLimit:
    """A small tmpfs at `path` (root), else a file-size limit (RLIMIT_FSIZE) on the run."""

    path: Path
    mode: str = ""
    limit: int | None = None
    _mounted: bool = field(default=False, repr=False)

    def __enter__(self) -> DiskLimit:
        self.path.mkdir(parents=True, exist_ok=True)
        mount = ["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(self.path)]
        self._mounted = subprocess.run(mount, capture_output=True).returncode == 0
        self.mode = "tmpfs (ENOSPC)" if self._mounted else "RLIMIT_FSIZE (EFBIG: no mount)"
        return self

    def leave_room(self, room: int) -> None:
        """Room for `room` more bytes: remove what the kill left staged, shrink the tmpfs."""
        for staged in self.path.rglob(".step-*.tmp-*"):
            shutil.rmtree(staged)
        if self._mounted:
            used = shutil.disk_usage(self.path).used
            size = f"size={used + room}"
            subprocess.run(["mount", "-o", f"remount,{size}", str(self.path)], check=True)
        else:
            self.limit = RLIMIT_BYTES

    def preexec(self) -> None:
        if self.limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.limit))

    def lift(self) -> None:
        self.limit = None
        if self._mounted:
            subprocess.run(["mount", "-o", "remount,size=512m", str(self.path)], check=True)

    def __exit__(self, *exc: object) -> None:
        if self._mounted:
            subprocess.run(["umount", str(self.path)], check=True)
