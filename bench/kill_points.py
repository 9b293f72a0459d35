"""Run a `dexvla` command that SIGKILLs its own process group at a chosen event.

    python bench/kill_points.py train --stage 1 ...   (the arguments of `dexvla`, as `dexvla`)

`bench/kill_resume.py` starts this in a new session, so the process group is the command and
its workers (collection and evaluation pools, ffmpeg). Events, each with a path:

- `replace`: just before an `os.replace` (path: its destination), `replaced`: just after;
  every atomic write and every checkpoint rename ends in one.
- `fsync`: just after an `os.fsync` (path: the file's), e.g. an `episodes.jsonl` line made
  durable before `eval_info.json` says so.
- `backward`: as a `Tensor.backward` starts, after that step's forward (train only).

`KILL_AT="event:n:regex"` kills at the n-th event whose path matches the regex (search);
`KILL_LOG=path` appends every event (`event path`) there, and the kill (`KILLED event path`).
Unset, the command runs untouched.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

LOG = os.environ.get("KILL_LOG")
SPEC = os.environ.get("KILL_AT")


class KillPoint:
    """Counts events matching the spec; kills the process group at the n-th."""

    def __init__(self, spec: str | None) -> None:
        event, count, pattern = spec.split(":", 2) if spec else ("", "0", "")
        self.event, self.left, self.pattern = event, int(count), re.compile(pattern)

    def hit(self, event: str, path: str) -> None:
        if LOG:
            self.note(f"{event} {path}")
        if event != self.event or not self.pattern.search(path):
            return
        self.left -= 1
        if self.left == 0:
            if LOG:
                self.note(f"KILLED {event} {path}")
            os.killpg(os.getpgrp(), signal.SIGKILL)

    @staticmethod
    def note(line: str) -> None:
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # type: ignore[arg-type]
        os.write(fd, (line + "\n").encode())
        os.close(fd)


def install(point: KillPoint, command: str) -> None:
    """Wrap `os.replace`, `os.fsync` (and, for `train`, `Tensor.backward`) with the point."""
    replace, fsync = os.replace, os.fsync

    def hooked_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        point.hit("replace", os.fspath(dst))
        replace(src, dst, *args, **kwargs)
        point.hit("replaced", os.fspath(dst))

    def hooked_fsync(fd: Any) -> None:
        fsync(fd)
        number = fd if isinstance(fd, int) else fd.fileno()
        try:
            path = os.readlink(f"/proc/self/fd/{number}")
        except OSError:
            path = f"fd:{number}"
        point.hit("fsync", path)

    os.replace, os.fsync = hooked_replace, hooked_fsync  # type: ignore[assignment]
    if command == "train":
        import torch

        backward: Callable[..., Any] = torch.Tensor.backward

        def hooked_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            point.hit("backward", "")
            return backward(self, *args, **kwargs)

        torch.Tensor.backward = hooked_backward  # type: ignore[method-assign]


def main() -> int:
    argv = sys.argv[1:]
    if SPEC or LOG:
        install(KillPoint(SPEC), argv[0] if argv else "")
    from dexvla.cli import main as dexvla

    return dexvla(argv)


if __name__ == "__main__":
    sys.exit(main())
