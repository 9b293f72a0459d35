"""Entry point that `test_processes` launches under torchrun (2 processes, gloo): what the
wrapping chose and which files each rank read on resume, written to `OUT/rank{r}.json`.

1. DDP on the toy without its unused head, then with it (`find_unused_parameters` chosen);
   the second run resumes from its full-layout checkpoint (rank 0 alone reads the tensors);
2. FSDP2 on the toy with its frozen layer, then a resume from its sharded checkpoint (each rank
   reads its own shards).

Usage: python -m torch.distributed.run ... dist_checks.py OUT CONFIG_JSON
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from train_toy import ToyDataset, make_policy

from dexvla.train import TrainConfig, Trainer, shards

READS: list[str] = []
read_tensors = shards.load_tensors


def recording_load_tensors(path):
    READS.append(Path(path).name)
    return read_tensors(path)


def resume_reads(model, config: TrainConfig, out: Path) -> list[str]:
    """The tensor files this rank reads when resuming `out` for two more steps."""
    READS.clear()
    longer = dataclasses.replace(config, steps=config.steps + 2)
    Trainer(model, ToyDataset(), longer, out, resume=True).train()
    return sorted(READS)


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    root = Path(sys.argv[1])
    config = TrainConfig.from_json(sys.argv[2])
    shards.load_tensors = recording_load_tensors
    report: dict[str, object] = {}

    all_used = Trainer(make_policy(unused_head=False), ToyDataset(), config, root / "all_used")
    all_used.train()
    ddp = Trainer(make_policy(), ToyDataset(), config, root / "ddp")
    ddp.train()
    report["ddp"] = {
        "all_used_find_unused": all_used.wrapped.find_unused_parameters,
        "find_unused": ddp.wrapped.find_unused_parameters,
        "bucket_view": ddp.wrapped.gradient_as_bucket_view,
        "resume_reads": resume_reads(make_policy(seed=1), config, root / "ddp"),
    }

    fsdp_config = dataclasses.replace(config, strategy="fsdp")
    fsdp = Trainer(make_policy(), ToyDataset(), fsdp_config, root / "fsdp")
    report["fsdp"] = {
        "frozen_is_dtensor": isinstance(fsdp.model.frozen.weight, DTensor),
        "trainable_are_dtensors": all(
            isinstance(p, DTensor) for p in fsdp.model.parameters() if p.requires_grad
        ),
    }
    fsdp.train()
    report["fsdp"]["resume_reads"] = resume_reads(make_policy(seed=1), fsdp_config, root / "fsdp")
    (root / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()
