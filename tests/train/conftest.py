"""Make the toy policy importable by the tests and by the subprocesses they launch."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread on a shared, busy CPU."""
    torch.set_num_threads(1)
    yield
