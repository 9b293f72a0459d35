"""`--device` / `--dtype`: auto is CUDA + bf16 when available, else CPU + fp32; errors name it."""

import argparse

import pytest
import torch

from dexvla.runtime.device import add_device_arguments, resolve_device, resolve_dtype


def test_auto_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_device(None) == torch.device("cuda")
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32


def test_explicit_choices_and_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu7")
    with pytest.raises(ValueError, match="--dtype must be one of"):
        resolve_dtype("int8")


def test_arguments_default_to_auto():
    parser = argparse.ArgumentParser()
    add_device_arguments(parser)
    args = parser.parse_args([])
    assert (args.device, args.dtype) == ("auto", "auto")
    assert parser.parse_args(["--dtype", "float16"]).dtype == "float16"
