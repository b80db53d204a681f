"""Test-wide setup.

The Triton kernels are tested through the Triton interpreter on CPU tensors, which must be
switched on before triton is first imported; the ahead-of-time compile tests run in a child
process without it (an interpreted ``@triton.jit`` function cannot be compiled).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
