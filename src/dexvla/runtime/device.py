"""Where a policy runs: the `--device` and `--dtype` of `dexvla serve` and `dexvla eval`.

"auto" (the default) is CUDA in bf16 when CUDA is available, else the CPU in fp32: bf16 halves
memory and doubles tensor-core throughput on a GPU, while a CPU runs fp32 fastest and exactly.
The diffusion sampler keeps fp32 maths whatever the model's dtype (`dexvla.policy.inference`).
"""

from __future__ import annotations

import argparse

import torch

AUTO = "auto"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(name: str | None = AUTO) -> torch.device:
    """ "auto" (or None) -> cuda when available, else cpu; any other torch device name as given.

    Asking for CUDA where there is none is an error that says so, not a crash in a worker.
    """
    if name is None or name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a torch device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available on this machine")
    return device


def resolve_dtype(name: str | None = AUTO, device: torch.device | None = None) -> torch.dtype:
    """ "auto" (or None) -> bf16 on a CUDA device that supports it, else fp32; or a named dtype."""
    if name is None or name == AUTO:
        device = device or resolve_device()
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {[AUTO, *DTYPES]}, got {name!r}")
    return DTYPES[name]


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device` and `--dtype`, both defaulting to "auto"."""
    parser.add_argument(
        "--device",
        default=AUTO,
        help="torch device for the policy (default auto: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--dtype",
        default=AUTO,
        choices=(AUTO, *DTYPES),
        help="policy weights' dtype (default auto: bfloat16 on CUDA, else float32)",
    )
