"""bench/bad_inputs.py at its quick size: every bad input gets a one-line error naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bad_inputs.py"


@pytest.mark.slow
def test_every_bad_input_gets_a_one_line_error_naming_it(tmp_path):
    table = tmp_path / "table.md"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(table)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and
            line[2].isdigit()]  # fmt: skip
    assert len(rows) >= 12 and all("FAIL" not in row and "**no**" not in row for row in rows)
    assert f"{len(rows)}/{len(rows)} rows pass." in table.read_text()
