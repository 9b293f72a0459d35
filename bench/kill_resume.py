"""Kill training, collection and evaluation at random points, resume, and count what survived.

    python bench/kill_resume.py --part all            # tiny sizes: minutes per part on 2 CPUs
    python bench/kill_resume.py --part train --kills 20 --seed 0

Every command runs as `dexvla ...` through `bench/kill_points.py`, in a session of its own, and
SIGKILLs its whole process group (workers, ffmpeg) at a chosen event: the n-th
`Tensor.backward` (a training step, after its forward), the n-th atomic file write inside a
checkpoint's staging directory (a save), just before or after the rename of a staging directory
to `step-N` (the atomic rename), or a stage-1 export write / one of stage 2's first steps before
its first checkpoint (the hand-over). n is drawn (seeded) from what is left of the run, counted
in an uninterrupted reference run. After each kill the same command runs again with `--resume`
(collection and evaluation resume by themselves); the last run is not killed.

- `train`: tiny stage 1 -> stage 2 (`--init` stage 1's final/), killed N times (default 20),
  against an uninterrupted run of the same seed: every resume must load the newest checkpoint
  that an independent check finds complete (manifest, sizes, every tensor readable), steps and
  logged losses must match, and final/ and the last checkpoint's model, EMA and optimiser
  tensors are compared bit for bit.
- `collect`, `eval`: `dexvla collect` (2 workers) and `dexvla eval --policy scripted` (2
  workers) killed N times (default 10) at the n-th `os.replace` / `os.fsync` of the command,
  which lands between an episode's data file and its metadata row, inside the consolidation, or
  between an `episodes.jsonl` line and `eval_info.json`. SIGKILL cannot tear a short line
  written by one write(2), so after the first eval kill half a line is appended by hand (what a
  power loss leaves). Checked against an uninterrupted run: every episode once, equal content.
- `disk-full`: a stage-2 run in a tmpfs (`mount -t tmpfs`; without the right to mount,
  RLIMIT_FSIZE, which fails writes with EFBIG instead of ENOSPC) that holds one checkpoint and
  not two: the error line, the kept checkpoint, then the resume with space again.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dexvla.io import atomic_write_text

sys.path.insert(0, str(Path(__file__).parent))
from kill_checks import (
    CKPT_FILE,
    CKPT_RENAME,
    EXPORT,
    Runner,
    checkpoints_state,
    compare_tensors,
    count_events,
    dataset_check,
    eval_check,
    metrics_steps,
)

TASK = "aloha-transfer-cube"
SIZES = {
    "mini": dict(steps=4, save_every=2, episodes=2, max_steps=20),  # the slow test's
    "tiny": dict(steps=12, save_every=3, episodes=4, max_steps=40),
    "small": dict(steps=40, save_every=5, episodes=8, max_steps=120),
}
WINDOWS = ("forward/backward", "checkpoint save", "atomic rename", "stage hand-over")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.size = SIZES[args.size]
        self.kills = args.kills
        self.seed = args.seed
        self.rng = np.random.default_rng(args.seed)
        self.work = work
        self.run = Runner(work)
        self.rows: list[tuple[str, str, object]] = []

    def row(self, part: str, figure: str, value: object) -> None:
        self.rows.append((part, figure, value))

    # ------------------------------------------------------------------ train
    def train_args(self, stage: int, root: Path, init: Path | None) -> list[str]:
        size = self.size
        args = ["train", "--stage", str(stage), "--preset", f"tiny-stage{stage}",
                "--data", str(self.work / "train-data"), "--out", str(root / f"s{stage}"),
                "--steps", str(size["steps"]), "--save-every", str(size["save_every"]),
                "--batch-size", "4", "--seed", str(self.seed), "--image-size", "28x28",
                "--warmup-steps", "3", "--log-every", "1"]  # fmt: skip
        return args + (["--init", str(init)] if init else [])

    def target(self, window: str, stage: int, step: int, counts: dict[str, int]) -> tuple[str, str]:
        """The kill spec of `window` for a stage run resuming at `step`, and where it lands."""
        steps, every = self.size["steps"], self.size["save_every"]
        saves = sum(1 for s in range(step + 1, steps + 1) if s % every == 0 or s == steps)
        pick = lambda hi: int(self.rng.integers(1, max(hi, 1) + 1))  # noqa: E731
        side = str(self.rng.choice(["replace", "replaced"]))
        if window == "export" or (saves == 0 and window != "start"):
            where = "stage hand-over" if stage == 1 else "final export"
            return f"{side}:{pick(counts['export'])}:{EXPORT}", where
        if window == "start":
            return f"backward:{pick(min(every, steps))}:", "stage hand-over"
        if window == "forward/backward":
            return f"backward:{pick(steps - step)}:", window
        if window == "checkpoint save":
            return f"replace:{pick(counts['files'] * saves)}:{CKPT_FILE}", window
        return f"{side}:{pick(saves)}:{CKPT_RENAME}", window

    def plan(self) -> list[tuple[int, str]]:
        windows = [WINDOWS[i % len(WINDOWS)] for i in range(self.kills)]
        self.rng.shuffle(windows)
        rest = [w for w in windows if w != "stage hand-over"]
        hand = ["export" if i % 2 == 0 else "start" for i in range(len(windows) - len(rest))]
        return (
            [(1, w) for w in rest[::2]]
            + [(1, w) for w in hand if w == "export"]
            + [(2, w) for w in hand if w == "start"]
            + [(2, w) for w in rest[1::2]]
        )

    def train_data(self) -> None:
        """One collected episode at 28 px: the training parts' data."""
        if not (self.work / "train-data").is_dir():
            out = str(self.work / "train-data")
            self.run.ok(["collect", "--task", TASK, "--episodes", "1", "--image-size", "28",
                         "--workers", "1", "--no-progress", "--out", out])  # fmt: skip

    def part_train(self) -> None:
        steps = self.size["steps"]
        self.train_data()
        ref, killed = self.work / "train-ref", self.work / "train-killed"
        counts: dict[int, dict[str, int]] = {}
        for stage in (1, 2):
            init = ref / "s1" / "final" if stage == 2 else None
            events = self.run.ok(self.train_args(stage, ref, init), log=True).events
            counts[stage] = count_events(events, steps, self.size["save_every"])
        plan = self.plan()
        landed: dict[str, int] = {}
        resumes_ok = bad_loads = partial_seen = 0
        resumes = 0
        for stage in (1, 2):
            init = killed / "s1" / "final" if stage == 2 else None
            args = [*self.train_args(stage, killed, init), "--resume"]
            ckpts = killed / f"s{stage}" / "checkpoints"
            for _, window in [p for p in plan if p[0] == stage] + [(stage, "")]:
                before = checkpoints_state(ckpts)
                spec, actual = (
                    self.target(window, stage, before.step, counts[stage]) if window else (None, "")
                )
                result = self.run.dexvla(args, kill_at=spec)
                loaded_right = result.resumed_from == before.path and (
                    before.path is None or before.complete
                )
                bad_loads += int(result.resumed_from is not None and not loaded_right)
                if result.after_kill:
                    resumes += 1
                    resumes_ok += int(loaded_right and result.rc in (0, -9))
                if spec is None and result.rc != 0:
                    raise RuntimeError(f"the last stage-{stage} run failed:\n{result.err[-3000:]}")
                if result.killed:
                    landed[actual] = landed.get(actual, 0) + 1
                    partial_seen += checkpoints_state(ckpts).partial
                self.run.mark_kill(result.killed)
        self.row("train", "kills landed (of planned)", f"{sum(landed.values())}/{len(plan)}")
        for window in (*WINDOWS, "final export"):
            if window in WINDOWS or window in landed:
                self.row("train", f"  in {window}", landed.get(window, 0))
        self.row("train", "resumes succeeded", f"{resumes_ok}/{resumes}")
        self.row("train", "half-written checkpoints left by kills", partial_seen)
        self.row("train", "corrupt/half-written checkpoints loaded", bad_loads)
        for stage in (1, 2):
            a, b = metrics_steps(ref / f"s{stage}"), metrics_steps(killed / f"s{stage}")
            intact = checkpoints_state(killed / f"s{stage}" / "checkpoints").step == steps
            self.row("train", f"stage {stage}: step count intact", intact and a.keys() == b.keys())
            self.row(
                "train",
                f"stage {stage}: logged losses equal",
                f"{sum(a[k] == b.get(k) for k in a)}/{len(a)}",
            )
        files = {"stage 1 final": "s1/final/model.safetensors",
                 "stage 2 final": "s2/final/model.safetensors"}  # fmt: skip
        last = f"s2/checkpoints/step-{steps:06d}"
        for name in ("model", "ema", "optimizer"):
            files[f"stage 2 last {name}"] = f"{last}/{name}.safetensors"
        for label, rel in files.items():
            same, total, diff = compare_tensors(ref / rel, killed / rel)
            self.row(
                "train", f"{label}: tensors bit-identical", f"{same}/{total} (max diff {diff:.3g})"
            )

    # ------------------------------------------------------------------ collect / eval
    def killed_runs(self, part: str, args: list[str], out: Path, ref_events: list[str],
                    remaining) -> tuple[int, int, int]:  # fmt: skip
        """Kill `args` `self.kills` times at the n-th replace/fsync, then finish it."""
        episodes = self.size["episodes"]
        landed = ok = torn = 0
        for k in range(self.kills + 1):
            spec = None
            if k < self.kills:
                event = str(self.rng.choice(["replace", "replaced", "fsync"]))
                kind = sum(1 for e in ref_events if e.split(" ", 1)[0] == event)
                most = max(1, kind * remaining() // episodes)  # what is surely left of it
                spec = f"{event}:{int(self.rng.integers(1, most + 1))}:"
            result = self.run.dexvla(args, kill_at=spec)
            if spec is None and result.rc != 0:
                raise RuntimeError(f"the last {part} run failed:\n{result.err[-3000:]}")
            ok += int(result.after_kill and result.rc in (0, -9))
            landed += int(result.killed is not None)
            self.run.mark_kill(result.killed)
            lines = out / "episodes.jsonl"
            last = k == self.kills - 1  # else the first kill after a finished episode
            if part == "eval" and (result.killed or last) and not torn and lines.is_file():
                text = lines.read_text().splitlines()
                if text:
                    with open(lines, "a") as handle:  # a torn line, as a power loss leaves one
                        handle.write(text[-1][: len(text[-1]) // 2])
                    torn = 1
        return landed, ok, torn

    def part_collect(self) -> None:
        n = self.size["episodes"]
        base = ["collect", "--task", TASK, "--episodes", str(n), "--image-size", "28",
                "--workers", "2", "--no-progress", "--out"]  # fmt: skip
        ref, out = self.work / "collect-ref", self.work / "collect-killed"
        events = self.run.ok([*base, str(ref)], log=True).events
        from dexvla.data.lerobot_v3.format import read_episode_rows

        def remaining() -> int:
            return n - (len(read_episode_rows(out)) if (out / "meta").is_dir() else 0)

        landed, ok, _ = self.killed_runs("collect", [*base, str(out)], out, events, remaining)
        self.row("collect", "kills landed", f"{landed}/{self.kills}")
        self.row("collect", "resumes succeeded", f"{ok}/{self.kills}")
        for figure, value in dataset_check(ref, out).items():
            self.row("collect", figure, value)

    def part_eval(self) -> None:
        n = self.size["episodes"]
        base = ["eval", "--policy", "scripted", "--task", TASK, "--episodes", str(n),
                "--image-size", "28", "--max-steps", str(self.size["max_steps"]), "--workers", "2",
                "--videos", "1", "--no-progress", "--out"]  # fmt: skip
        ref, out = self.work / "eval-ref", self.work / "eval-killed"
        events = self.run.ok([*base, str(ref)], log=True).events

        def remaining() -> int:
            lines = out / "episodes.jsonl"
            return n - (len(lines.read_text().splitlines()) if lines.is_file() else 0)

        landed, ok, torn = self.killed_runs("eval", [*base, str(out)], out, events, remaining)
        self.row("eval", "kills landed", f"{landed}/{self.kills}")
        self.row("eval", "resumes succeeded", f"{ok}/{self.kills}")
        self.row("eval", "torn lines injected", torn)
        for figure, value in eval_check(ref, out, n).items():
            self.row("eval", figure, value)

    # ------------------------------------------------------------------ disk full
    def part_disk_full(self) -> None:
        from kill_checks import DiskLimit

        every = self.size["save_every"]
        self.train_data()
        with DiskLimit(self.work / "disk") as disk:
            root = disk.path
            args = self.train_args(2, root, None)
            args[args.index("--steps") + 1] = str(2 * every)
            result = self.run.dexvla(args, kill_at=f"replace:2:{CKPT_RENAME}")
            assert result.killed, "the first run was not killed at its second checkpoint"
            ckpts = root / "s2" / "checkpoints"
            kept = checkpoints_state(ckpts)
            disk.leave_room(kept.bytes // 2)
            full = self.run.dexvla([*args, "--resume"], preexec=disk.preexec)
            lines = [line for line in full.err.strip().splitlines() if line.strip()]
            after = checkpoints_state(ckpts)
            disk.lift()
            again = self.run.dexvla([*args, "--resume"])
        self.row("disk-full", "limit", disk.mode)
        self.row("disk-full", "exit status", full.rc)
        self.row("disk-full", "error line", lines[-1] if lines else "(none)")
        self.row("disk-full", "traceback printed", "Traceback" in full.err)
        self.row("disk-full", "previous checkpoint intact",
                 after.path == kept.path and after.complete and after.partial == 0)  # fmt: skip
        self.row("disk-full", "resumed from it and finished",
                 again.rc == 0 and again.resumed_from == kept.path)  # fmt: skip

    def table(self) -> str:
        width = max(len(f) for _, f, _ in self.rows)
        return "\n".join(f"{p:<10} {f:<{width}}  {v}" for p, f, v in self.rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("train", "collect", "eval", "disk-full", "all"),
                        default="all")  # fmt: skip
    parser.add_argument("--kills", type=int, default=None, help="default 20 train, 10 others")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=tuple(SIZES), default="tiny")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    args = parser.parse_args()
    parts = ("train", "collect", "eval", "disk-full") if args.part == "all" else (args.part,)
    with tempfile.TemporaryDirectory(prefix="kill_resume.") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        kills = args.kills
        bench = Bench(args, work)
        for part in parts:
            bench.kills = kills if kills is not None else (20 if part == "train" else 10)
            start = time.perf_counter()
            getattr(bench, "part_" + part.replace("-", "_"))()
            bench.row(part, "wall seconds (contended CPU)", f"{time.perf_counter() - start:.0f}")
    print(bench.table())
    if args.json:
        figures: dict[str, dict[str, object]] = {}
        for part, figure, value in bench.rows:
            figures.setdefault(part, {})[figure.strip()] = value
        atomic_write_text(args.json, json.dumps(figures, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
