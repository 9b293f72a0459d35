"""Entry point that `test_processes` launches under torchrun: the toy run on several processes,
once per strategy, in one process group (saves a torchrun start per strategy).

Usage: python -m torch.distributed.run ... ddp_worker.py OUT_ROOT CONFIG_JSON STRATEGY...
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
    for strategy in sys.argv[3:]:
        run_config = dataclasses.replace(config, strategy=strategy)
        Trainer(make_policy(), ToyDataset(), run_config, Path(sys.argv[1]) / strategy).train()
    dist.destroy_process_group()
