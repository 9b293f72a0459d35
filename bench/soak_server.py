"""The policy server under load and garbage, on loopback: `dexvla serve` as a subprocess with a
tiny random-weight checkpoint, well-behaved clients, and one attacker process.

Phases, all in one run: (1) `--clients` well-behaved clients (the package's
`WebsocketClientPolicy`, one thread each, one request in flight each) for `--unloaded`
seconds: their p50/p99 latency unloaded; (2) the same clients for at least `--duration`
seconds while an attacker process sends `--garbage` malformed messages of the kinds in
`soak_attacks.py`'s docstring (random bytes, truncated msgpack, wrong types, missing and extra
keys, wrong image shapes and dtypes, NaN/inf state, unknown embodiment, oversized arrays,
messages and frames, bad websocket frames, HTTP garbage, slow-loris handshakes and frames, a
connection storm past the connection limit); (3) every client closes and the server settles.

Figures: the server alive throughout (a `GET /healthz` every second), well-formed requests
answered k/k with finite actions of the advertised shape, each malformed kind's outcomes
(error reply, close code, HTTP status, dropped; none hung or answered with actions), p99 under
the storm / unloaded p99 (target <= 2x), the server's resident memory (VmRSS) growth during
the storm (target < 100 MB) and its open file descriptors before and after (back to baseline).
The machine's other load shows in the latencies: compare the ratio, not the absolute times.

    python bench/soak_server.py                                # 8 clients, 60 s, 10,000 messages
    python bench/soak_server.py --duration 5 --garbage 300 --clients 2 --unloaded 3   # tiniest

Exit status 0 when the server stayed up, every well-formed request got actions, no malformed
one hung or got actions, the descriptors came back to baseline and the server logged no
traceback; timings never fail it.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak_attacks import FAILURES, attack

from dexvla.io import atomic_write_json
from dexvla.serve.client import WebsocketClientPolicy

RSS_TARGET_MB = 100.0
RATIO_TARGET = 2.0


def build_checkpoint(directory: Path) -> Path:
    """A tiny random-weight checkpoint with ALOHA statistics (56 px cameras, short answers)."""
    import dataclasses

    import torch

    from dexvla.policy.configuration import get_policy_preset
    from dexvla.policy.modeling import DexVLAPolicy
    from dexvla.policy.processor import DexVLAProcessor
    from dexvla.stats import DatasetStats

    torch.manual_seed(0)
    config = get_policy_preset("tiny")
    config = config.replace(
        vlm=dataclasses.replace(config.vlm, image_size=(56, 56), max_new_tokens=12)
    )
    rng = np.random.default_rng(0)
    stats = DatasetStats.from_arrays(
        "aloha", rng.normal(size=(64, 14)), rng.uniform(-1.0, 1.0, size=(64, 14))
    )
    processor = DexVLAProcessor(config.vlm.image_size, config.embodiments, stats)
    return DexVLAPolicy(config, processor=processor).save_pretrained(directory / "tiny")


def start_server(checkpoint: Path, args: argparse.Namespace, log: Path) -> tuple:
    """`dexvla serve` on a free loopback port; returns (process, port) once it listens."""
    command = [
        *(sys.executable, "-m", "dexvla.cli", "serve", "--checkpoint", str(checkpoint)),
        *("--host", "127.0.0.1", "--port", "0", "--max-message-mb", str(args.max_message_mb)),
        *("--max-connections", str(args.max_connections)),
        *("--handshake-timeout", str(args.handshake_timeout)),
        *("--ping-interval", str(args.ping_interval), "--ping-timeout", str(args.ping_timeout)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = re.search(r"serving on ws://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if found:
            return process, int(found.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{log.read_text()}")
        time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"the server did not listen within 180 s:\n{log.read_text()}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class Monitor(threading.Thread):
    """Once a second: the health check, the server's RSS (peak kept) and that it still runs."""

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        super().__init__(daemon=True)
        self.process, self.port = process, port
        self.checks = self.failures = 0
        self.peak_rss = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.checks += 1
            alive = self.process.poll() is None and healthy(self.port)
            self.failures += not alive
            if self.process.poll() is None:
                self.peak_rss = max(self.peak_rss, rss_mb(self.process.pid))


class Client(threading.Thread):
    """A well-behaved client: the same valid observation, one request at a time, every reply
    checked; latencies recorded under the phase current when the request was sent."""

    def __init__(self, port: int, obs: dict, action_shape: tuple, phase: list[str]) -> None:
        super().__init__(daemon=True)
        self.port, self.obs, self.action_shape, self.phase = port, obs, action_shape, phase
        self.sent: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.latencies: dict[str, list[float]] = {}
        self.infer_ms: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        client = WebsocketClientPolicy("127.0.0.1", self.port, open_timeout=30, timeout=60)
        with client:
            while not self.stop.is_set():
                phase = self.phase[0]
                self.sent[phase] += 1
                start = time.perf_counter()
                try:
                    reply = client.infer(self.obs)
                except Exception as error:  # every failure is a figure, not a crash
                    self.errors.append(f"{type(error).__name__}: {error}")
                    return
                self.latencies.setdefault(phase, []).append(time.perf_counter() - start)
                self.infer_ms.setdefault(phase, []).append(reply["server_timing"]["infer_ms"])
                actions = reply["actions"]
                if actions.shape == self.action_shape and np.isfinite(actions).all():
                    self.answered[phase] += 1
                else:
                    self.errors.append(f"bad actions of shape {actions.shape}")


def observation(metadata: dict) -> dict:
    """A valid observation built from the server's advertised spec (48x64 camera images)."""
    rng = np.random.default_rng(0)
    obs: dict = {}
    for key, spec in metadata["observation"].items():
        if spec["dtype"] == "str":
            if spec.get("required", True):
                obs[key] = "transfer the cube"
        elif spec["dtype"] == "uint8":
            obs[key] = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        else:
            obs[key] = rng.normal(size=spec["shape"]).astype(spec["dtype"])
    return obs


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def settle_fds(pid: int, baseline: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while fd_count(pid) > baseline and time.monotonic() < deadline:
        time.sleep(0.2)
    return fd_count(pid)


def soak(args: argparse.Namespace, scratch: Path) -> dict:
    checkpoint = build_checkpoint(scratch)
    process, port = start_server(checkpoint, args, scratch / "server.log")
    try:
        figures = measure(args, process, port)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log = (scratch / "server.log").read_text(errors="replace")
    figures["server_tracebacks"] = log.count("Traceback (most recent call last)")
    return figures


def measure(args: argparse.Namespace, process: subprocess.Popen, port: int) -> dict:
    with WebsocketClientPolicy("127.0.0.1", port, open_timeout=30, timeout=120) as warm:
        metadata = warm.get_server_metadata()
        obs = observation(metadata)
        warm.infer(obs)  # the first call allocates the model's buffers
    fds_before = settle_fds(process.pid, 0, 1.0)
    monitor = Monitor(process, port)
    monitor.start()
    phase = ["unloaded"]
    action_shape = tuple(metadata["action"]["shape"])
    clients = [Client(port, obs, action_shape, phase) for _ in range(args.clients)]
    for client in clients:
        client.start()
    time.sleep(args.unloaded)
    rss_start = rss_mb(process.pid)
    monitor.peak_rss = rss_start
    phase[0] = "storm"
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        attack_args = (port, args.garbage, args.duration, metadata, vars(args))
        pending = pool.apply_async(attack, attack_args)
        started = time.monotonic()
        outcomes = pending.get(timeout=args.duration + 600)
        storm_s = time.monotonic() - started
    remaining = args.duration - storm_s
    if remaining > 0:
        time.sleep(remaining)
        storm_s = args.duration
    phase[0] = "after"
    rss_end = rss_mb(process.pid)
    for client in clients:
        client.stop.set()
    for client in clients:
        client.join(120)
    monitor.stop.set()
    monitor.join(10)
    fds_after = settle_fds(process.pid, fds_before, args.settle)

    def merged(field: str, name: str) -> int:
        return sum(getattr(client, field)[name] for client in clients)

    latency, infer_ms = (
        {
            name: [x for client in clients for x in getattr(client, field).get(name, [])]
            for name in ("unloaded", "storm")
        }
        for field in ("latencies", "infer_ms")
    )
    sent = {name: merged("sent", name) for name in ("unloaded", "storm", "after")}
    answered = {name: merged("answered", name) for name in ("unloaded", "storm", "after")}
    return {
        "alive": process.poll() is None and monitor.failures == 0 and healthy(port),
        "health_checks": monitor.checks,
        "health_failures": monitor.failures,
        "well_formed_sent": sum(sent.values()),
        "well_formed_answered": sum(answered.values()),
        "storm_sent": sent["storm"],
        "client_errors": [e for client in clients for e in client.errors],
        "clients_finished": not any(client.is_alive() for client in clients),
        "outcomes": outcomes,
        "malformed_sent": sum(sum(kinds.values()) for kinds in outcomes.values()),
        "malformed_failed": sum(
            n for kinds in outcomes.values() for name, n in kinds.items() if name in FAILURES
        ),
        "storm_s": storm_s,
        "p50_unloaded_ms": percentile(latency["unloaded"], 50) * 1e3,
        "p99_unloaded_ms": percentile(latency["unloaded"], 99) * 1e3,
        "p50_storm_ms": percentile(latency["storm"], 50) * 1e3,
        "p99_storm_ms": percentile(latency["storm"], 99) * 1e3,
        "infer_p50_unloaded_ms": percentile(infer_ms["unloaded"], 50),
        "infer_p50_storm_ms": percentile(infer_ms["storm"], 50),
        "rss_start_mb": rss_start,
        "rss_peak_mb": monitor.peak_rss,
        "rss_end_mb": rss_end,
        "fds_before": fds_before,
        "fds_after": fds_after,
    }


def passed(figures: dict) -> bool:
    return (
        figures["alive"]
        and figures["well_formed_answered"] == figures["well_formed_sent"] > 0
        and not figures["client_errors"]
        and figures["clients_finished"]
        and figures["malformed_failed"] == 0
        and figures["malformed_sent"] >= 1
        and figures["fds_after"] <= figures["fds_before"]
        and figures["server_tracebacks"] == 0
    )


def report(figures: dict, args: argparse.Namespace) -> None:
    f = figures
    ratio = f["p99_storm_ms"] / f["p99_unloaded_ms"]
    growth = f["rss_peak_mb"] - f["rss_start_mb"]
    print(
        f"server alive throughout: {f['alive']} ({f['health_checks']} health checks, "
        f"{f['health_failures']} failed)"
    )
    print(
        f"well-formed requests answered with actions: {f['well_formed_answered']}/"
        f"{f['well_formed_sent']} ({f['storm_sent']} during the {f['storm_s']:.0f} s storm, "
        f"{args.clients} clients); client errors: {len(f['client_errors'])}"
    )
    print(
        f"malformed messages: {f['malformed_sent']}, hung or wrongly answered: "
        f"{f['malformed_failed']}"
    )
    for kind, outcomes in sorted(f["outcomes"].items()):
        text = ", ".join(f"{name} {n}" for name, n in sorted(outcomes.items()))
        print(f"  {kind:24s} {text}")
    for name in ("unloaded", "storm"):
        p50, p99 = f[f"p50_{name}_ms"], f[f"p99_{name}_ms"]
        infer = f[f"infer_p50_{name}_ms"]
        print(
            f"latency {name:9s} p50 {p50:8.1f} ms  p99 {p99:8.1f} ms  (policy call p50 "
            f"{infer:.1f} ms)"
        )
    print(f"p99 storm / unloaded: {ratio:.2f}x (target <= {RATIO_TARGET:g}x; machine load shows)")
    print(
        f"server RSS: {f['rss_start_mb']:.0f} MB at the storm's start, peak "
        f"{f['rss_peak_mb']:.0f} MB, {f['rss_end_mb']:.0f} MB at its end: growth "
        f"{growth:.1f} MB (target < {RSS_TARGET_MB:g} MB)"
    )
    print(
        f"server file descriptors: {f['fds_before']} before, {f['fds_after']} after "
        f"{args.settle:g} s settle (target: back to baseline)"
    )
    print(f"tracebacks in the server's log: {f['server_tracebacks']} (target: 0)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="well-behaved clients")
    parser.add_argument("--duration", type=float, default=60.0, help="storm phase, seconds")
    parser.add_argument("--garbage", type=int, default=10_000, help="malformed messages")
    parser.add_argument("--unloaded", type=float, default=20.0, help="unloaded phase, seconds")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds for fds to settle")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--max-message-mb", type=float, default=1.0)
    parser.add_argument("--max-connections", type=int, default=32)
    parser.add_argument("--handshake-timeout", type=float, default=2.0)
    parser.add_argument("--ping-interval", type=float, default=2.0)
    parser.add_argument("--ping-timeout", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dexvla-soak-") as scratch:
        figures = soak(args, Path(scratch))
    report(figures, args)
    if args.json is not None:
        atomic_write_json(args.json, figures)
    ok = passed(figures)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
