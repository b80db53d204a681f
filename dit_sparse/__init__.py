"""dit-sparse: sparse 3D attention for Diffusion Transformers.

``import dit_sparse as ds``; see README.md for the quick start.
"""

from .layout import TokenLayout
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

__version__ = "0.1.0"

__all__ = [
    "TokenLayout", "Pattern", "Full", "Neighborhood", "SlidingTile", "BlockSparse", "parse_pattern",
    "sparse_attention", "reference_attention", "estimate_speedup", "SpeedupEstimate",
    "choose_backend", "can_run_cpu", "can_run_triton", "BlockMask",
]
