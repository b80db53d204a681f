"""dit-sparse: sparse 3D attention for Diffusion Transformers.

``import dit_sparse as ds``; see README.md for the quick start.
"""

import os as _os

# Installed, ``dit_sparse.kernels`` and ``dit_sparse.pipelines`` are subfolders of this package
# (pyproject maps the top-level ``kernels/`` and ``pipelines/`` folders there). Imported from a
# source checkout instead (the repository root on sys.path, e.g. ``python -m dit_sparse`` run
# there), they sit beside this folder: let the package find them there. Neither folder has an
# ``__init__.py`` (see kernels/README.md): as namespace portions they can never shadow an
# installed top-level ``kernels`` or ``pipelines`` package when Python runs from the root.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "kernels")) and _os.path.isdir(
        _os.path.join(_root, "kernels", "triton_attn")):
    __path__.append(_root)

from .layout import TokenLayout  # noqa: E402
from .patterns import BlockSparse, Full, Neighborhood, Pattern, SlidingTile, parse_pattern
from .ops import (
    SpeedupEstimate,
    choose_backend,
    can_run_cpu,
    can_run_triton,
    estimate_speedup,
    reference_attention,
    sparse_attention,
)
from .blockmask import BlockMask
from .plan import Plan, PlanGridWarning, PlanStepsWarning

__version__ = "0.1.0"

# Parts that run models live in dit_sparse.pipelines (they import diffusers): loaded lazily so
# that the core stays importable and fast without touching diffusers.
_LAZY = {"apply": "api", "remove": "api", "applied": "api", "profile": "profiling"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"dit_sparse.pipelines.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'dit_sparse' has no attribute {name!r}")

__all__ = [
    "TokenLayout", "Pattern", "Full", "Neighborhood", "SlidingTile", "BlockSparse", "parse_pattern",
    "sparse_attention", "reference_attention", "estimate_speedup", "SpeedupEstimate",
    "choose_backend", "can_run_cpu", "can_run_triton", "BlockMask", "apply", "remove", "applied",
    "Plan", "PlanGridWarning", "PlanStepsWarning", "profile",
]
