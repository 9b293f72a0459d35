"""The engine across processes: crash-safety under SIGKILL, and DDP/FSDP equivalence."""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from train_toy import ToyDataset, make_policy

from dexvla.train import TrainConfig, Trainer, latest_checkpoint, read_metrics
from dexvla.train.tensors import load_tensors

HERE = Path(__file__).parent

# Trains the toy in a subprocess and SIGKILLs it in the middle of writing one checkpoint.
KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from train_toy import ToyDataset, make_policy
    from dexvla.train import TrainConfig, Trainer, checkpoint

    out, config_json, kill_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    write_tensors = checkpoint.save_tensors

    def save_tensors(tensors, path, metadata=None):
        write_tensors(tensors, path, metadata)
        if f".step-{kill_step:06d}.tmp-" in str(path) and str(path).endswith("model.safetensors"):
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save_tensors = save_tensors
    Trainer(make_policy(noise=0.2), ToyDataset(), TrainConfig.from_json(config_json), out).train()
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_sigkill_during_save_resumes_from_last_complete(tmp_path: Path) -> None:
    config = TrainConfig(
        steps=6, batch_size=8, lr=1e-2, ema=0.9, save_every=2, log_every=1, tensorboard=False
    )
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(out), config.to_json(), "4"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    root = out / "checkpoints"
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".step-000004.tmp-")]
    assert len(leftovers) == 1  # the half-written checkpoint is there ...
    assert latest_checkpoint(root) == root / "step-000002"  # ... but never chosen

    resumed = Trainer(make_policy(noise=0.2), ToyDataset(), config, out, resume=True)
    resumed.train()
    straight = Trainer(make_policy(noise=0.2), ToyDataset(), config, tmp_path / "straight")
    straight.train()
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    assert resumed.model.seen_ids == straight.model.seen_ids[2 * 8 :]
    assert not any(".tmp-" in p.name for p in root.iterdir())
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 7))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path: Path) -> None:
    config = TrainConfig(
        steps=4,
        batch_size=8,
        grad_accum=2,
        lr=1e-2,
        weight_decay=0.1,
        ema=0.9,
        save_every=4,
        log_every=2,
        tensorboard=False,
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(HERE / "ddp_worker.py"), str(tmp_path / "multi"), config.to_json(), "6", "ddp", "fsdp",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    single = tmp_path / "single"
    Trainer(make_policy(), ToyDataset(), config, single).train()
    longer = dataclasses.replace(config, steps=6)
    from_single = Trainer(make_policy(seed=1), ToyDataset(), longer, single, resume=True)
    from_single.train()
    for strategy, step, name in itertools.product(
        ("ddp", "fsdp"), (4, 6), ("model", "ema", "optimizer")
    ):
        want = load_tensors(single / "checkpoints" / f"step-{step:06d}" / f"{name}.safetensors")
        ckpt = tmp_path / "multi" / strategy / "checkpoints" / f"step-{step:06d}"
        got = load_tensors(ckpt / f"{name}.safetensors")
        assert got.keys() == want.keys(), (strategy, name)
        for key in want:
            msg = f"{strategy} step {step} {name} {key}"
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=msg)
    for strategy in ("ddp", "fsdp"):
        records = read_metrics(tmp_path / "multi" / strategy / "metrics.jsonl")
        assert [r["step"] for r in records] == [2, 4, 6]  # rank 0 alone logs

    # A checkpoint written by two processes resumes on one (the data order does not depend on
    # the number of processes) and continues like the single-process run.
    from_multi = Trainer(
        make_policy(seed=1),
        ToyDataset(),
        longer,
        tmp_path / "from_multi",
        resume=tmp_path / "multi" / "ddp" / "checkpoints" / "step-000004",
    )
    from_multi.train()
    assert from_multi.model.seen_ids == from_single.model.seen_ids
    for key, value in from_single.model.state_dict().items():
        torch.testing.assert_close(from_multi.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
