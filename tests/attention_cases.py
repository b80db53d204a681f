"""Shared helpers of the attention tests: inputs, per-dtype tolerances, a row-subset reference."""

from __future__ import annotations

import torch

import dit_sparse as ds

# Max-abs error allowed against the float64 reference, per dtype (inputs ~ N(0, 1)).
ATOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def make_qkv(layout, batch=2, heads=2, head_dim=64, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = layout.seq_len
    return [torch.randn(batch, s, heads, head_dim, generator=g).to(dtype) for _ in range(3)]


def make_key_mask(layout, batch=2, seed=1):
    """Drop the last text tokens of each batch row (as padded prompts do) and a few video keys."""
    g = torch.Generator().manual_seed(seed)
    km = torch.rand(batch, layout.seq_len, generator=g) > 0.1
    if layout.text_len:
        t0 = layout.text_start
        for b in range(batch):
            keep = max(1, layout.text_len - 2 * (b + 1))
            km[b, t0 + keep:t0 + layout.text_len] = False
    return km


def reference_rows(q, k, v, pattern, layout, rows, key_mask=None, scale=None):
    """float64 reference for a subset of query rows only (for grids too big for S x S scores).

    Uses the pattern's dense mask (rows only) - an independent path from the kernels' tables.
    """
    mask = mask_rows(pattern, layout, q, k, rows)
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qd = q[:, rows].double().transpose(1, 2)
    kd, vd = (t.double().transpose(1, 2) for t in (k, v))
    scores = (qd @ kd.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return (probs @ vd).transpose(1, 2)


PATTERNS_SMALL = [
    ds.Full(),
    ds.Neighborhood((3, 5, 5)),
    ds.Neighborhood((2, 4, 6), dilation=(1, 2, 1), stride=(1, 2, 3)),
    ds.SlidingTile((1, 4, 4), (3, 1, 3)),
    ds.BlockSparse((1, 4, 4), topk=0.3),
    ds.BlockSparse((2, 4, 4), threshold=0.5),
]


def mask_rows(pattern, layout, q, k, rows):
    """``pattern.mask(layout, q, k)[..., rows, :]`` without building all of a data-dependent
    mask (block-sparse masks are ``[B, H, S, S]``)."""
    if isinstance(pattern, ds.BlockSparse):
        from dit_sparse.tiling import BlockGrid, block_sparse_select

        grid = BlockGrid(layout.grid, pattern.block)
        sel = block_sparse_select(pattern, layout, grid, q, k)
        tok2blk = grid.token_block()
        # video-to-video part from the block selection, text rows/columns global
        s, v0, n = layout.seq_len, layout.video_start, layout.video_len
        blk = torch.full((s,), -1, dtype=torch.long)
        blk[v0:v0 + n] = tok2blk
        rb, cb = blk[rows], blk
        m = sel[:, :, rb.clamp(min=0)][:, :, :, cb.clamp(min=0)]
        return m | (rb < 0)[:, None] | (cb < 0)[None, :]
    mask = pattern.mask(layout, q, k)
    return mask.view((1,) * (4 - mask.dim()) + tuple(mask.shape))[..., rows, :]


def case_layout(case):
    """The layout of a ``(grid, text_len, text_position, pattern)`` case."""
    grid, text, position, _ = case
    return ds.TokenLayout(grid, text_len=text, text_position=position)


def case_id(case):
    """A pytest id for a ``(grid, text_len, text_position, pattern)`` case."""
    grid, text, position, pattern = case
    return f"{'x'.join(map(str, grid))}-text{text}{position}-{pattern.spec}"


def check_triton(pattern, layout, q, k, v, key_mask=None, *, against_cpu=False):
    """The Triton backend's output against the float64 reference (and the CPU backend)."""
    ref = ds.reference_attention(q, k, v, pattern, layout, key_mask=key_mask)
    out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=key_mask, backend="triton")
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), ref.float(), atol=ATOL[q.dtype], rtol=0)
    if against_cpu:
        cpu = ds.sparse_attention(q, k, v, pattern, layout, key_mask=key_mask, backend="cpu")
        torch.testing.assert_close(out.float(), cpu.float(), atol=2 * ATOL[q.dtype], rtol=0)
    return out
