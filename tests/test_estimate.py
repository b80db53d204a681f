"""estimate_speedup: FLOP bound from the exact pair count, tile bound from whole tiles."""

import math

import pytest
import torch

import dit_sparse as ds
from dit_sparse.kernels.triton_attn.launcher import block_shape


def tiles_touched(mask, grid, qb, kb):
    """Brute force: count (query tile, key tile) pairs with an attended pair, from the dense mask."""
    t, h, w = grid
    coords = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 3)

    def tile_id(block):
        n = [-(-g // b) for g, b in zip(grid, block)]
        c = coords // torch.tensor(block)
        return (c[:, 0] * n[1] + c[:, 1]) * n[2] + c[:, 2], math.prod(n)

    qi, nq = tile_id(qb)
    ki, nk = tile_id(kb)
    touched = torch.zeros(nq, nk, dtype=torch.bool)
    nz = mask.nonzero()
    touched[qi[nz[:, 0]], ki[nz[:, 1]]] = True
    return int(touched.sum()), nq, nk


@pytest.mark.parametrize("pattern", [ds.Neighborhood((3, 5, 5)), ds.SlidingTile((2, 4, 4), 3), ds.Full(),
                                     ds.Neighborhood((2, 6, 6), dilation=(1, 2, 2))], ids=repr)
def test_estimate_matches_brute_force(pattern):
    grid = (6, 16, 20)
    lay = ds.TokenLayout(grid)
    est = ds.estimate_speedup(pattern, lay, block=(64, 32))
    m = pattern.mask(lay)
    assert est.flop_bound == pytest.approx(1 / m.double().mean().item())
    qb, kb = est.q_block, est.kv_block
    assert math.prod(qb) == 64 and math.prod(kb) == 32
    touched, nq, nk = tiles_touched(m, grid, qb, kb)
    assert est.tile_bound == pytest.approx(nq * nk / touched)
    assert 1.0 <= est.tile_bound <= est.flop_bound + 1e-9


def test_sliding_tile_aligned_tiles_cost_nothing_extra():
    lay = ds.TokenLayout((8, 32, 32))
    est = ds.estimate_speedup(ds.SlidingTile((2, 8, 8), 3), lay, block=(128, 128))
    assert est.tile_bound == pytest.approx(est.flop_bound)
    assert est.flop_bound == pytest.approx((4 / 3) ** 3)


def test_block_shape_rule():
    assert block_shape(64) == (1, 8, 8)
    assert block_shape(128) == (2, 8, 8)
    assert block_shape(64, prefer=(4, 4, 4)) == (4, 4, 4)
    assert block_shape(32, prefer=(1, 16, 16)) == (1, 2, 16)
