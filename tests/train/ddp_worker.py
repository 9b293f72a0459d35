"""Entry point that `test_processes` launches under torchrun: the toy run on several processes,
once per strategy, in one process group (saves a torchrun start per strategy): train to
`config.steps`, then resume from that checkpoint and go on to EXTENDED_STEPS.

Usage: python -m torch.distributed.run ... ddp_worker.py OUT_ROOT CONFIG_JSON EXTENDED_STEPS
STRATEGY...
"""

import dataclasses
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from train_toy import ToyDataset, make_policy

from dexvla.train import TrainConfig, Trainer

if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    config = TrainConfig.from_json(sys.argv[2])
    for strategy in sys.argv[4:]:
        out = Path(sys.argv[1]) / strategy
        run_config = dataclasses.replace(config, strategy=strategy)
        Trainer(make_policy(), ToyDataset(), run_config, out).train()
        longer = dataclasses.replace(run_config, steps=int(sys.argv[3]))
        Trainer(make_policy(seed=1), ToyDataset(), longer, out, resume=True).train()
    dist.destroy_process_group()
