"""Bad inputs: what a user gets for each of 40 kinds of broken or wrong input, CLI and Python API.

Builds small valid artefacts in a temporary directory (aloha, sawyer and hand LeRobot v3
datasets, ACT HDF5 episodes, an mp4, a tiny policy checkpoint, a stage-1 artefact), then
gives each case its own copy, breaks it (truncated or overwritten bytes, a rewritten column,
a dropped key) or passes a wrong argument, and runs `dexvla ...` in a subprocess or the Python
call in-process. A row passes when the user gets exactly one line of error naming the thing
(the file, key, flag or name), a non-zero exit status without a traceback (CLI) or a
ValueError / KeyError / OSError (API), and every artefact of the case is byte-identical
afterwards except the file the case broke.

Prints a markdown table and exits non-zero if any row fails.

    nice .venv/bin/python bench/bad_inputs.py [--quick] [--only SUBSTRING] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_input_cases import ARTEFACTS, CASES, Case, build_artefacts

from dexvla.io import atomic_write_text

API_ERRORS = (ValueError, KeyError, OSError)
DEXVLA = [sys.executable, "-m", "dexvla.cli"]
MESSAGE_CHARS = 240  # of a message shown in the table (the check reads it whole)


@dataclass
class Row:
    """One case's outcome."""

    case: Case
    message: str  # the error's first line, temporary paths shortened
    status: str  # exit status (CLI) or exception type (API)
    status_ok: bool
    one_line: bool
    named: bool
    intact: bool
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status_ok and self.one_line and self.named and self.intact


def tree_hash(root: Path, skip: Path | None) -> str:
    """sha256 over every file's relative path and bytes under `root`, but `skip`."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if skip is not None and path.resolve() == skip.resolve():
            continue
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_cli(argv: list[str], timeout: float) -> tuple[str, str, bool, bool]:
    """(message, status, status ok, one line) of `dexvla argv`: ok is a non-zero exit without a
    traceback; one line, an `error:` line that is the last thing printed. A run past `timeout`
    is killed with the processes it started."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("DEXVLA_DEBUG", None)
    with subprocess.Popen(
        DEXVLA + argv, stdout=PIPE, stderr=PIPE, text=True, env=env, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return f"no error after {timeout:.0f} s", "timeout", False, False
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if "error:" in line]
    clean = "Traceback" not in stderr
    status = str(process.returncode)
    if not errors:
        return (lines or stdout.strip().splitlines() or ["(no output)"])[-1], status, False, False
    one_line = clean and errors[0] == len(lines) - 1
    return lines[errors[0]], status, process.returncode != 0 and clean, one_line


def run_api(call: Callable[[dict[str, Path]], Any], paths: dict[str, Path]) -> tuple[str, ...]:
    """(message, status, status ok, one line) of a Python call that should raise."""
    try:
        call(paths)
    except API_ERRORS as error:
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        lines = text.strip().splitlines() or [""]
        return lines[0], type(error).__name__, True, len(lines) == 1
    except Exception as error:  # a raw error of another kind is a failing row, not a crash
        text = f"{type(error).__name__}: {error}"
        return text.splitlines()[0], type(error).__name__, False, False
    return "no error", "returned", False, False


def run_case(case: Case, built: Path, work: Path, timeout: float) -> Row:
    """Copy the artefacts the case uses, break them, run it, check the message and the hashes."""
    work.mkdir(parents=True)
    paths = {name: work / name for name in ARTEFACTS}
    paths["OUT"] = work / "OUT"
    paths["FILE"] = work / "FILE"
    paths["FILE"].write_text("a file, not a directory\n")
    for name in case.uses:
        source = built / name
        if source.is_dir():
            shutil.copytree(source, paths[name])
        else:
            shutil.copy2(source, paths[name])
    broken = case.corrupt(paths) if case.corrupt is not None else None
    before = {name: tree_hash(work / name, broken) for name in case.uses}
    start = time.perf_counter()
    if case.api is not None:
        message, status, status_ok, one_line = run_api(case.api, paths)
    else:
        argv = [part.format(**{k: str(v) for k, v in paths.items()}) for part in case.argv]
        message, status, status_ok, one_line = run_cli(argv, timeout)
    seconds = time.perf_counter() - start
    after = {name: tree_hash(work / name, broken) for name in case.uses}
    names = [name.format(**{k: str(v) for k, v in paths.items()}) for name in case.names]
    return Row(
        case=case,
        message=message.replace(str(work) + "/", ""),
        status=status,
        status_ok=status_ok,
        one_line=one_line,
        named=all(name in message for name in names),
        intact=before == after,
        seconds=seconds,
    )


def cell(text: str, limit: int = 0) -> str:
    """`text` for a table cell, cut to `limit` characters (0: whole) with an ellipsis."""
    if limit and len(text) > limit:
        text = text[:limit].rstrip() + " …"
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[Row]) -> str:
    """The markdown table of the rows."""
    columns = ("#", "kind", "interface", "command / call", "message (first line)", "named?")
    columns += ("exit", "saved intact")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for index, row in enumerate(rows, 1):
        case = row.case
        call = case.call if case.api is not None else "dexvla " + " ".join(case.argv)
        exit_text = row.status if row.status_ok and row.one_line else f"**{row.status}** (FAIL)"
        lines.append(
            f"| {index} | {cell(case.kind)} | {'API' if case.api else 'CLI'} | `{cell(call)}` | "
            f"{cell(row.message, MESSAGE_CHARS)} | {'yes' if row.named else '**no**'} | "
            f"{exit_text} | {'yes' if row.intact else '**no**'} |"
        )
    passed = sum(row.passed for row in rows)
    lines.append("")
    lines.append(f"{passed}/{len(rows)} rows pass.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the quick subset")
    parser.add_argument("--only", default="", help="only cases whose kind contains this")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--timeout", type=float, default=180.0, help="per CLI case, seconds")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    np.seterr(all="ignore")
    cases = [
        case
        for case in CASES
        if (case.quick or not args.quick) and args.only.lower() in case.kind.lower()
    ]
    root = Path(tempfile.mkdtemp(prefix="dexvla-bad-inputs-"))
    try:
        start = time.perf_counter()
        build_artefacts(root / "built")
        rows = []
        for index, case in enumerate(cases):
            row = run_case(case, root / "built", root / f"case-{index:02d}", args.timeout)
            rows.append(row)
            mark = "ok  " if row.passed else "FAIL"
            print(f"{mark} {row.seconds:5.1f} s  {case.kind}: {row.message}", file=sys.stderr)
        text = table(rows)
        print(text)
        print(f"\n({len(rows)} cases in {time.perf_counter() - start:.0f} s)", file=sys.stderr)
        if args.out is not None:
            atomic_write_text(args.out, text + "\n")
        return 0 if all(row.passed for row in rows) else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
