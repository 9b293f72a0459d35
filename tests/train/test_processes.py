"""The engine across processes: crash-safety under SIGKILL, DDP/FSDP equivalence, the wrapping
choices, sharded checkpoints and who reads what on resume."""

from __future__ import annotations

import dataclasses
import itertools
import json
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
from dexvla.train.checkpoint import MANIFEST_FILE, MODEL_FILE
from dexvla.train.shards import read_full_tensors
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
    proc = _torchrun("ddp_worker.py", str(tmp_path / "multi"), config.to_json(), "6", "ddp", "fsdp")
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
        got = read_full_tensors(ckpt, name)  # FSDP: each rank's shards, assembled
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


def _torchrun(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(HERE / script), *args,
    ]  # fmt: skip
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_wrapping_choices_and_who_reads_on_resume(tmp_path: Path) -> None:
    config = TrainConfig(
        steps=2, batch_size=8, lr=1e-2, ema=0.9, save_every=2, log_every=1, tensorboard=False
    )
    proc = _torchrun("dist_checks.py", str(tmp_path), config.to_json())
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, report in enumerate(ranks):
        # DDP: find_unused_parameters only for the model that leaves a head unused.
        assert report["ddp"]["all_used_find_unused"] is False
        assert report["ddp"]["find_unused"] is True
        assert report["ddp"]["bucket_view"] is True
        # FSDP2: the frozen layer stays whole on every rank, the trainable ones are sharded.
        assert report["fsdp"]["frozen_is_dtensor"] is False
        assert report["fsdp"]["trainable_are_dtensors"] is True
        # Resume: rank 0 alone reads a full checkpoint; each rank reads its own shards.
        full = ["ema.safetensors", "model.safetensors", "optimizer.safetensors"]
        assert report["ddp"]["resume_reads"] == (full if rank == 0 else [])
        own = [f"{name}-rank{rank}.safetensors" for name in ("ema", "model", "optimizer")]
        assert report["fsdp"]["resume_reads"] == own
    ckpt = tmp_path / "fsdp" / "checkpoints" / "step-000002"
    assert json.loads((ckpt / MANIFEST_FILE).read_text())["layout"] == "sharded"
    assert not (ckpt / MODEL_FILE).exists() and (ckpt / "model-rank1.safetensors").is_file()

    # Each run equals one process's (the all-used model's, DDP without find_unused; the
    # others after their resumed steps).
    single = Trainer(make_policy(unused_head=False), ToyDataset(), config, tmp_path / "one")
    single.train()
    got = read_full_tensors(tmp_path / "all_used" / "checkpoints" / "step-000002", "model")
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)
    longer = dataclasses.replace(config, steps=4)
    straight = Trainer(make_policy(), ToyDataset(), longer, tmp_path / "straight")
    straight.train()
    for run in ("ddp", "fsdp"):
        got = read_full_tensors(tmp_path / run / "checkpoints" / "step-000004", "model")
        for key, value in straight.model.state_dict().items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=f"{run} {key}")
    # A sharded checkpoint resumes on one process too (its shards assembled).
    from_fsdp = Trainer(
        make_policy(seed=1), ToyDataset(), longer, tmp_path / "from_fsdp", resume=ckpt
    )
    from_fsdp.train()
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(from_fsdp.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
