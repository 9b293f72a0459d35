"""bench/soak_server.py at its tiniest size: the server survives garbage and load.

The figures asserted are the non-timing ones; the latency ratio is printed, never a condition.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "soak_server.py"
OK_OUTCOMES = ("error", "close ", "http ", "dropped", "metadata")


@pytest.mark.slow
def test_the_server_survives_garbage_and_answers_every_well_formed_request(tmp_path):
    figures_path = tmp_path / "figures.json"
    tiny = ["--duration", "5", "--garbage", "300", "--clients", "2", "--unloaded", "3"]
    done = subprocess.run(
        [sys.executable, str(BENCH), *tiny, "--settle", "10", "--json", str(figures_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(figures_path.read_text())
    assert figures["alive"] and figures["health_failures"] == 0
    assert figures["health_checks"] >= 5
    assert figures["well_formed_answered"] == figures["well_formed_sent"]
    assert figures["storm_sent"] > 0 and not figures["client_errors"]
    outcomes = figures["outcomes"]
    assert sum(sum(kind.values()) for kind in outcomes.values()) == 300
    for kind, counts in outcomes.items():
        assert all(name.startswith(OK_OUTCOMES) for name in counts), (kind, counts)
    assert figures["malformed_failed"] == 0
    assert set(outcomes["oversized_frame"]) == {"close 1009"}
    assert set(outcomes["slow_loris_frame"]) == {"close 1011"}
    assert set(outcomes["slow_loris_handshake"]) == {"dropped"}
    assert "http 503" in outcomes["connection_storm"]  # the storm went past the limit
    assert figures["fds_after"] <= figures["fds_before"]
    assert figures["server_tracebacks"] == 0
    assert "p99 storm / unloaded" in done.stdout
