"""Setup for the embedded model's research tests (run by a bare ``pytest``: pyproject's testpaths).

The scripts under test are not a package: their folder goes on ``sys.path`` (as the scripts
put it there themselves), with ``scripts/`` for ``eval_plan.py`` and ``tests/`` for the tiny
model configs of ``pipelines_fixtures.py``. The environment is the library tests' own
(``tests/conftest.py``), so these tests behave the same run alone or with the rest.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
for folder in (ROOT / "tests", ROOT / "scripts", HERE.parent):  # the last inserted is searched first
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
