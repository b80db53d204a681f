"""Sliding tiles with even windows (issue 28, item 5): the tile-aligned rule against a
brute-force tile-level mask written from STA's definition, odd windows unchanged, the CPU
and Triton kernels, the far field, densities and speedup estimates.

The references here loop over tiles and tokens in plain Python; nothing is shared with
``SlidingTile.axis_windows`` or the tilings.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import dit_sparse as ds
from dit_sparse import env
from dit_sparse.blockmask import static_block_mask
from dit_sparse.farfield import far_field_for


# --------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------


def sta_key_tiles(n_tiles: int, window: int, q_tile: int) -> set:
    """STA's tile-level rule on one axis: ``window`` consecutive tiles, ``window // 2`` of them
    before the query's tile, the run moved back inside ``[0, n_tiles)`` at the ends; a window
    of at least ``n_tiles`` tiles is the whole axis."""
    if window >= n_tiles:
        return set(range(n_tiles))
    first = q_tile - window // 2
    first = max(0, min(first, n_tiles - window))
    return set(range(first, first + window))


def axis_keys_aligned(length: int, tile: int, window: int, i: int) -> set:
    """Keys of query coordinate ``i`` on an axis that ``tile`` divides: the tokens of STA's key tiles."""
    assert length % tile == 0
    tiles = sta_key_tiles(length // tile, window, i // tile)
    return {j for j in range(length) if j // tile in tiles}


def axis_keys_documented(length: int, tile: int, window: int, i: int) -> set:
    """The docstring's rule on any axis, token by token: ``tile * window`` keys from the first
    token of tile ``i // tile - window // 2``, moved back inside the axis."""
    size = tile * window
    start = (i // tile - window // 2) * tile
    if start + size > length:
        start = length - size
    if start < 0:
        start = 0
    return {j for j in range(length) if start <= j < start + size}


def brute_mask(layout: ds.TokenLayout, tile, window, axis_keys=axis_keys_aligned) -> torch.Tensor:
    """``[S, S]`` bool: video pairs by the per-axis rule, text rows and columns global."""
    grid = layout.grid
    keys = [[axis_keys(grid[a], tile[a], window[a], i) for i in range(grid[a])] for a in range(3)]
    coords = list(itertools.product(*(range(n) for n in grid)))
    s, v0 = layout.seq_len, layout.video_start
    m = torch.ones(s, s, dtype=torch.bool)
    video = torch.zeros(len(coords), len(coords), dtype=torch.bool)
    for qi, qc in enumerate(coords):
        for ki, kc in enumerate(coords):
            video[qi, ki] = all(kc[a] in keys[a][qc[a]] for a in range(3))
    m[v0:v0 + len(coords), v0:v0 + len(coords)] = video
    return m


def brute_attention(q, k, v, mask, key_mask=None):
    """float64 masked softmax attention over ``[B, S, H, D]`` inputs, loop-free but mask-given."""
    scale = q.shape[-1] ** -0.5
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    allowed = mask[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    scores = (qd @ kd.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, -1).nan_to_num(0.0) @ vd).transpose(1, 2)


def key_mask_for(layout, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    km = torch.rand(batch, layout.seq_len, generator=g) > 0.15
    km[:, layout.video_start] = True  # every batch row keeps a key
    return km


def qkv(layout, batch=2, heads=2, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, layout.seq_len, heads, d, generator=g) for _ in range(3)]


# --------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------


def test_the_docstring_example_tile_4_window_2_axis_16():
    """Hand-written bounds of both rules for tile 4, window 2 on 16 tokens (4 tiles)."""
    lo, hi = ds.SlidingTile.axis_windows(16, 4, 2)
    assert lo.tolist() == [0] * 8 + [4] * 4 + [8] * 4
    assert hi.tolist() == [7] * 8 + [11] * 4 + [15] * 4
    layout = ds.TokenLayout((1, 1, 16))
    (slo, shi, _), = ds.SlidingTile((1, 1, 4), (1, 1, 2)).as_neighborhood().windows(layout)[2:]
    assert slo.tolist() == [0] * 4 + [2] * 4 + [6] * 4 + [8] * 4  # queries 4-7 see keys 2-9
    assert shi.tolist() == [7] * 4 + [9] * 4 + [13] * 4 + [15] * 4
    assert "strided rule" in ds.SlidingTile.__doc__ and "Tile 4, window 2" in ds.SlidingTile.__doc__


ALIGNED = [  # (grid, tile, window, text_len, text_position): grids every tile divides
    ((2, 8, 12), (1, 4, 4), (1, 2, 2), 0, "first"),
    ((2, 8, 12), (1, 4, 4), (2, 2, 2), 3, "first"),
    ((4, 6, 8), (2, 2, 2), (2, 2, 4), 4, "last"),
    ((3, 12, 8), (1, 2, 2), (2, 6, 2), 2, "last"),
    ((1, 16, 4), (1, 4, 2), (1, 2, 1), 0, "first"),  # the docstring's axis
    ((6, 4, 8), (1, 2, 2), (4, 1, 3), 3, "first"),   # mixed even and odd
]


@pytest.mark.parametrize("case", ALIGNED, ids=lambda c: f"{c[0]}-t{c[1]}-w{c[2]}-{c[3]}{c[4]}")
def test_mask_is_sta_tile_level_definition(case):
    grid, tile, window, text_len, position = case
    layout = ds.TokenLayout(grid, text_len=text_len, text_position=position)
    p = ds.SlidingTile(tile, window)
    expect = brute_mask(layout, tile, window)
    assert torch.equal(p.mask(layout), expect)
    # and every query tile sees exactly min(window, tiles) tiles per axis, as STA's windows do
    video = expect[layout.video_start:layout.video_start + layout.video_len,
                   layout.video_start:layout.video_start + layout.video_len]
    per_row = video.sum(1)
    want = math.prod(min(w, n // t) * t for n, t, w in zip(grid, tile, window))
    assert (per_row == want).all()


@pytest.mark.parametrize("grid, tile, window", [
    ((3, 10, 9), (2, 4, 4), (2, 2, 2)),
    ((5, 7, 11), (2, 3, 4), (2, 2, 2)),
    ((3, 13, 6), (1, 4, 4), (3, 4, 1)),
])
@pytest.mark.parametrize("text_len, position", [(0, "first"), (4, "last")])
def test_ragged_grids_follow_the_documented_rule(grid, tile, window, text_len, position):
    """Tiles that do not divide the axis: STA does not define them; the docstring's rule keeps
    ``tile * window`` keys, moved back inside the axis like odd windows always were."""
    layout = ds.TokenLayout(grid, text_len=text_len, text_position=position)
    p = ds.SlidingTile(tile, window)
    assert torch.equal(p.mask(layout), brute_mask(layout, tile, window, axis_keys_documented))


@pytest.mark.parametrize("length, tile", [(16, 4), (18, 4), (10, 4), (7, 3), (13, 5), (9, 1), (3, 4), (30, 8)])
def test_odd_windows_are_the_strided_neighborhood_on_every_grid(length, tile):
    """Every odd window, from 1 to past the axis, on grids the tile divides and does not."""
    layout = ds.TokenLayout((1, 1, length))
    for window in range(1, 2 * (length // tile) + 4, 2):
        p = ds.SlidingTile((1, 1, tile), (1, 1, window))
        (lo, hi, d), = p.windows(layout)[2:]
        (slo, shi, sd), = p.as_neighborhood().windows(layout)[2:]
        assert d == sd == 1
        assert torch.equal(lo, slo) and torch.equal(hi, shi), window


@settings(max_examples=30, deadline=None)
@given(st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)),
       st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 4)),
       st.tuples(*[st.integers(0, 2)] * 3))
def test_odd_windows_mask_equals_strided_mask(grid, tile, half):
    window = tuple(2 * h + 1 for h in half)
    layout = ds.TokenLayout(grid, text_len=2)
    p = ds.SlidingTile(tile, window)
    assert torch.equal(p.mask(layout), ds.Neighborhood(p.kernel, stride=tile).mask(layout))


def test_even_windows_differ_from_the_strided_rule_and_keep_blocks_whole():
    layout = ds.TokenLayout((2, 8, 12), text_len=3)
    p = ds.SlidingTile((1, 4, 4), (1, 2, 2))
    strided = p.as_neighborhood()
    assert not torch.equal(p.mask(layout), strided.mask(layout))
    # blocks of one tile: the new rule keeps or skips each whole; the strided rule cuts them
    bm = static_block_mask(p, layout, (1, 4, 4), (1, 4, 4))
    nvq = bm.num_video_q_blocks
    assert int(bm.kv_num_blocks[0, :nvq].sum()) == 0 and int(bm.full_kv_num_blocks[0, :nvq].sum()) > 0
    sbm = static_block_mask(strided, layout, (1, 4, 4), (1, 4, 4))
    assert int(sbm.kv_num_blocks[0, :nvq].sum()) > 0
    assert p.density(layout) == pytest.approx(p.density(layout, exact=True))


def test_plain_spec_and_dict_round_trip_keep_even_windows():
    p = ds.parse_pattern("sliding-tile:tile=1x4x4,window=1x2x2")
    assert p == ds.SlidingTile((1, 4, 4), (1, 2, 2)) and type(p) is ds.SlidingTile
    assert ds.Pattern.from_dict(p.to_dict()) == p
    assert p != p.as_neighborhood()
    assert "even window" in ds.patterns.PATTERN_SPEC_HELP


# --------------------------------------------------------------------------------------
# Densities and speedup estimates
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALIGNED[:4], ids=lambda c: f"{c[0]}-t{c[1]}-w{c[2]}")
def test_density_and_estimate_count_the_brute_force_mask(case):
    grid, tile, window, text_len, position = case
    layout = ds.TokenLayout(grid, text_len=text_len, text_position=position)
    p = ds.SlidingTile(tile, window)
    expect = brute_mask(layout, tile, window)
    exact = expect.double().mean().item()
    assert p.density(layout, exact=True) == pytest.approx(exact, rel=1e-12)
    # blocks of one tile each: tile-aligned windows keep whole blocks, so no block costs more
    block = math.prod(tile)
    est = ds.estimate_speedup(p, layout, block=(block, block))
    assert est.q_block == tuple(tile) and est.kv_block == tuple(tile)
    assert est.density == pytest.approx(exact, rel=1e-12)
    # tile density by brute force: every (query tile, key tile) pair with an attended pair
    v0, n = layout.video_start, layout.video_len
    coords = list(itertools.product(*(range(g) for g in grid)))
    tile_of = [tuple(c[a] // tile[a] for a in range(3)) for c in coords]
    video = expect[v0:v0 + n, v0:v0 + n]
    kept = {(tile_of[i], tile_of[j]) for i, j in video.nonzero().tolist()}
    s = layout.seq_len
    text_pairs = s * s - n * n
    assert est.tile_density == pytest.approx((len(kept) * block * block + text_pairs) / (s * s), rel=1e-12)
    assert est.tile_density == pytest.approx(exact, rel=1e-12)


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------

KERNEL_CASES = [
    ((2, 8, 12), (1, 4, 4), (1, 2, 2), 5, "first", axis_keys_aligned),
    ((2, 8, 12), (1, 4, 4), (2, 2, 2), 4, "last", axis_keys_aligned),
    ((3, 10, 9), (2, 4, 4), (2, 2, 2), 3, "last", axis_keys_documented),
    ((4, 6, 8), (2, 2, 2), (2, 2, 4), 0, "first", axis_keys_aligned),
]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: f"{c[0]}-t{c[1]}-w{c[2]}-{c[3]}{c[4]}")
def test_cpu_kernel_and_reference_match_brute_force_attention(case):
    grid, tile, window, text_len, position, rule = case
    layout = ds.TokenLayout(grid, text_len=text_len, text_position=position)
    p = ds.SlidingTile(tile, window)
    q, k, v = qkv(layout)
    mask = brute_mask(layout, tile, window, rule)
    for km in (None, key_mask_for(layout)):
        want = brute_attention(q, k, v, mask, km)
        out = ds.sparse_attention(q, k, v, p, layout, key_mask=km, backend="cpu")
        assert out.dtype == torch.float32 and out.shape == q.shape
        assert (out.double() - want).abs().max().item() <= 2e-5
        ref = ds.reference_attention(q, k, v, p, layout, key_mask=km)
        assert (ref.double() - want).abs().max().item() <= 1e-6


@pytest.mark.skipif(not env.triton_interpret(), reason="needs TRITON_INTERPRET=1 before triton is imported")
def test_triton_kernel_matches_brute_force_attention():
    """The Triton path reads the same window tables (blockmask.py): one small interpreted call."""
    layout = ds.TokenLayout((1, 12, 8), text_len=3, text_position="first")
    tile, window = (1, 4, 4), (1, 2, 1)  # 3 tiles of rows, windows of 2
    p = ds.SlidingTile(tile, window)
    q, k, v = qkv(layout, batch=1, heads=1, d=16)
    mask = brute_mask(layout, tile, window)
    assert not torch.equal(mask, p.as_neighborhood().mask(layout))  # a case where the rules differ
    want = brute_attention(q, k, v, mask)
    out = ds.sparse_attention(q, k, v, p, layout, backend="triton")
    assert (out.double() - want).abs().max().item() <= 2e-5


# --------------------------------------------------------------------------------------
# The far field
# --------------------------------------------------------------------------------------


def test_far_field_near_boxes_are_the_brute_force_ones():
    """A box is pooled for a query iff no query of its box attends exactly to any of its keys."""
    layout = ds.TokenLayout((3, 10, 9), text_len=2)
    tile, window, pool = (2, 4, 4), (2, 2, 2), (1, 3, 4)
    p = ds.SlidingTile(tile, window, far=pool)
    exact = brute_mask(layout, tile, window, axis_keys_documented)
    v0, n = layout.video_start, layout.video_len
    video = exact[v0:v0 + n, v0:v0 + n]
    coords = list(itertools.product(*(range(g) for g in layout.grid)))
    nbox = [-(-g // b) for g, b in zip(layout.grid, pool)]
    box_of = torch.tensor([((c[0] // pool[0]) * nbox[1] + c[1] // pool[1]) * nbox[2] + c[2] // pool[2]
                           for c in coords])
    nb = math.prod(nbox)
    onehot = torch.zeros(n, nb, dtype=torch.bool)
    onehot[torch.arange(n), box_of] = True
    near = torch.zeros(nb, nb, dtype=torch.bool)
    for qb in range(nb):
        rows = video[box_of == qb]
        near[qb] = (rows.any(0)[:, None] & onehot).any(0)
    tables = far_field_for(p, layout)
    assert torch.equal(tables.near, near)
    # no key is both exact for a query and inside one of its pooled boxes
    pooled_keys = tables.token_far()[:, box_of]  # [query, key]: the key's box is pooled for the query
    assert not (pooled_keys & video).any()


def test_far_field_of_whole_tile_boxes_is_dense_attention_with_equal_keys():
    """Keys and values constant per tile, boxes = tiles, even windows: the exact tiles and the
    pooled ones (log(count) bias) add up to dense attention, each key counted once."""
    layout = ds.TokenLayout((2, 12, 16), text_len=3, text_position="last")
    tile = (1, 4, 4)
    p = ds.SlidingTile(tile, (2, 2, 2), far=tile)
    coords = list(itertools.product(*(range(g) for g in layout.grid)))
    nh, nw = 12 // 4, 16 // 4
    box = torch.tensor([(c[0] * nh + c[1] // 4) * nw + c[2] // 4 for c in coords])
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, layout.seq_len, 2, 16, generator=g) for _ in range(3))
    per_box_k, per_box_v = (torch.randn(1, int(box.max()) + 1, 2, 16, generator=g) for _ in range(2))
    v0, n = layout.video_start, layout.video_len
    k[:, v0:v0 + n], v[:, v0:v0 + n] = per_box_k[:, box], per_box_v[:, box]
    dense = brute_attention(q, k, v, torch.ones(layout.seq_len, layout.seq_len, dtype=torch.bool))
    assert (ds.reference_attention(q, k, v, p, layout).double() - dense).abs().max().item() <= 1e-6
    assert (ds.sparse_attention(q, k, v, p, layout, backend="cpu").double() - dense).abs().max().item() <= 2e-5
    # the strided rule cuts tiles: its near boxes are only partly exact, so it is not dense here
    strided = p.as_neighborhood()
    assert (ds.reference_attention(q, k, v, strided, layout).double() - dense).abs().max().item() > 1e-3


@pytest.mark.parametrize("far", [(1, 4, 4), ds.FarField((1, 3, 4), sinks=3)], ids=repr)
def test_far_field_cpu_kernel_equals_reference(far):
    layout = ds.TokenLayout((3, 10, 9), text_len=4, text_position="first")
    p = ds.SlidingTile((2, 4, 4), (2, 2, 2), far=far)
    q, k, v = qkv(layout)
    km = key_mask_for(layout)
    for mask in (None, km):
        out = ds.sparse_attention(q, k, v, p, layout, key_mask=mask, backend="cpu")
        ref = ds.reference_attention(q, k, v, p, layout, key_mask=mask)
        assert (out - ref).abs().max().item() <= 2e-5
    # pooled keys counted once: density = exact pairs + one pooled key per far box per query
    tables = far_field_for(p, layout)
    pooled = float(tables.token_far().sum())
    exact = brute_mask(layout, (2, 4, 4), (2, 2, 2), axis_keys_documented).double().sum().item()
    s = layout.seq_len
    assert p.density(layout, exact=True) == pytest.approx((exact + pooled) / (s * s), rel=1e-12)
