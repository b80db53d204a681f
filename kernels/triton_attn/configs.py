"""Tile configurations of the Triton kernel: data, keyed by (dtype, head_dim bucket).

``block_m``/``block_n`` are token counts of the 3D query and key blocks (powers of two, as
``tl.arange`` needs); the launcher turns them into 3D shapes that fit the pattern. Every entry
is compiled ahead of time for sm_80 and sm_90a in the tests (``tests/test_triton_aot.py``),
which also checks that the head_dim 64 and 128 entries do not spill registers, nor any build
with the far-field loop (overrides: ``FAR_CONFIGS``) or with the sink loop too (``SINK_CONFIGS``),
with window masks or with a block selection (``BLOCK_CONFIGS``, ``BLOCK_FAR_CONFIGS``).
"""

from dataclasses import dataclass

HEAD_DIM_BUCKETS = (32, 64, 128, 256)
DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# (dtype, head_dim bucket) -> config, chosen by compiling candidates for sm_80 and sm_90a and
# keeping the largest tiles that do not spill (scripts/triton_aot_report.py prints the report).
# fp32 inputs are multiplied in TF32 on tensor cores (as torch's allow_tf32 matmuls).
CONFIGS = {
    ("float16", 32): TileConfig(128, 64, 4, 3),
    ("float16", 64): TileConfig(128, 64, 8, 2),
    ("float16", 128): TileConfig(64, 64, 8, 2),
    ("float16", 256): TileConfig(64, 32, 8, 2),
    ("bfloat16", 32): TileConfig(128, 64, 4, 3),
    ("bfloat16", 64): TileConfig(128, 64, 8, 2),
    ("bfloat16", 128): TileConfig(64, 64, 8, 2),
    ("bfloat16", 256): TileConfig(64, 32, 8, 2),
    ("float32", 32): TileConfig(128, 64, 8, 2),
    ("float32", 64): TileConfig(64, 64, 4, 2),
    ("float32", 128): TileConfig(64, 32, 8, 2),
    ("float32", 256): TileConfig(32, 32, 8, 1),
}


# The kernel with the far-field loop compiled in (HAS_FAR) uses CONFIGS too, except where
# that spills; then the entry here, with the same tile sizes (so the same block masks and far
# tables). fp32 / 64: four warps need more than 255 registers on sm_80 with the far loop.
FAR_CONFIGS = {
    ("float32", 64): TileConfig(64, 64, 8, 2),
}

# With the sink loop compiled in as well (HAS_SINKS): FAR_CONFIGS / CONFIGS, except where that
# spills; then the entry here, with the same tile sizes. The configs already at 255 registers
# with the far loop need one more warp group (head_dim 32) or one pipeline stage less.
SINK_CONFIGS = {
    ("float16", 32): TileConfig(128, 64, 8, 3),
    ("float16", 128): TileConfig(64, 64, 8, 1),
    ("float16", 256): TileConfig(64, 32, 8, 1),
    ("bfloat16", 32): TileConfig(128, 64, 8, 3),
    ("bfloat16", 128): TileConfig(64, 64, 8, 1),
    ("bfloat16", 256): TileConfig(64, 32, 8, 1),
    ("float32", 128): TileConfig(64, 32, 8, 1),
}


# Block-sparse patterns without a far field (the block-selection mode of the plain kernel):
# CONFIGS, except where that spills; then the entry here, keyed by (dtype, head_dim bucket).
# The selection mode keeps a per-row pattern block and gathers [BLOCK_M, BLOCK_N] selection
# entries: one pipeline stage and eight warps, then smaller key tiles, then smaller query
# tiles, until sm_80 and sm_90a both compile without spills (fp16 / 32 with CONFIGS' 128 x 64
# tiles: ~2 KB of spills).
BLOCK_CONFIGS = {
    ("float16", 32): TileConfig(128, 32, 8, 1),
    ("float16", 128): TileConfig(64, 32, 8, 1),
    ("float16", 256): TileConfig(32, 32, 8, 1),
    ("bfloat16", 32): TileConfig(128, 32, 8, 1),
    ("bfloat16", 128): TileConfig(64, 32, 8, 1),
    ("bfloat16", 256): TileConfig(32, 32, 8, 1),
    ("float32", 32): TileConfig(128, 32, 8, 1),
    ("float32", 64): TileConfig(64, 32, 8, 1),
}

# Block-sparse patterns with a far field (the block-selection mode of the far and sink loops):
# FAR_CONFIGS / SINK_CONFIGS / CONFIGS, except where that spills; then the entry here, keyed by
# (dtype, head_dim bucket, sinks). Its tiles may differ, since block-sparse block masks are
# built per call from the pattern's own blocks. The selection mode keeps a per-row pattern
# block and gathers [BLOCK_M, BLOCK_N] selection entries, so one pipeline stage, then smaller
# key tiles, then smaller query tiles, until sm_80 and sm_90a both compile without spills.
BLOCK_FAR_CONFIGS = {
    ('float16', 32, False): TileConfig(64, 64, 8, 1),
    ('float16', 32, True): TileConfig(64, 64, 8, 1),
    ('float16', 64, False): TileConfig(128, 64, 8, 1),
    ('float16', 64, True): TileConfig(128, 64, 8, 1),
    ('float16', 128, False): TileConfig(64, 32, 8, 1),
    ('float16', 128, True): TileConfig(64, 32, 8, 1),
    ('float16', 256, False): TileConfig(32, 32, 8, 1),
    ('float16', 256, True): TileConfig(32, 32, 8, 1),
    ('bfloat16', 32, False): TileConfig(64, 64, 8, 1),
    ('bfloat16', 32, True): TileConfig(64, 64, 8, 1),
    ('bfloat16', 64, False): TileConfig(128, 64, 8, 1),
    ('bfloat16', 64, True): TileConfig(128, 64, 8, 1),
    ('bfloat16', 128, False): TileConfig(64, 32, 8, 1),
    ('bfloat16', 128, True): TileConfig(64, 32, 8, 1),
    ('bfloat16', 256, False): TileConfig(32, 32, 8, 1),
    ('bfloat16', 256, True): TileConfig(32, 32, 8, 1),
    ('float32', 32, False): TileConfig(128, 32, 8, 1),
    ('float32', 32, True): TileConfig(128, 32, 8, 1),
    ('float32', 64, False): TileConfig(64, 32, 8, 1),
    ('float32', 64, True): TileConfig(64, 32, 8, 1),
    ('float32', 128, False): TileConfig(32, 32, 8, 1),
    ('float32', 128, True): TileConfig(32, 32, 8, 1),
}


def head_dim_bucket(head_dim: int) -> int:
    """Smallest bucket >= head_dim (the kernel pads the head dimension to it)."""
    for bucket in HEAD_DIM_BUCKETS:
        if head_dim <= bucket:
            return bucket
    raise ValueError(f"head_dim={head_dim} exceeds the largest supported {HEAD_DIM_BUCKETS[-1]}")


def get_config(dtype_name: str, head_dim: int, far: bool = False, sinks: bool = False,
               block: bool = False) -> TileConfig:
    """The shipped config for a dtype and head_dim (``far``: of the kernel with the far-field
    loop; ``sinks``: with the sink loop too; ``block``: of a block selection, i.e. a
    block-sparse pattern); lists the valid keys when there is none."""
    key = (dtype_name, head_dim_bucket(head_dim))
    if key not in CONFIGS:
        raise ValueError(f"no Triton tile config for dtype={dtype_name!r}, head_dim={head_dim}; "
                         f"valid (dtype, head_dim) keys: {sorted(CONFIGS)}")
    if sinks and not far:
        raise ValueError("sinks=True needs far=True (sinks are part of a far field)")
    if block and far and (*key, sinks) in BLOCK_FAR_CONFIGS:
        return BLOCK_FAR_CONFIGS[(*key, sinks)]
    if block and not far:
        return BLOCK_CONFIGS.get(key, CONFIGS[key])
    if sinks and key in SINK_CONFIGS:
        return SINK_CONFIGS[key]
    return FAR_CONFIGS.get(key, CONFIGS[key]) if far else CONFIGS[key]
