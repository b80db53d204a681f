"""Pattern semantics: NATTEN's rules, checked against brute force, plus serialisation and errors."""

import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import dit_sparse as ds
from dit_sparse.patterns import axis_windows


def natten_1d(i: int, j: int, length: int, kernel: int, dilation: int, stride: int) -> bool:
    """NATTEN's non-causal rule for one axis, written from its definition, pair by pair.

    Dilation groups are coordinates mod dilation, each a problem of its own length; the stride
    group leader is its centre query (right-hand for even strides), capped at the group end;
    the window centre is the leader clamped so that ``kernel // 2`` keys fit on the left and
    ``kernel // 2 - (1 - kernel % 2)`` on the right. dit-sparse clamps the kernel to the group.
    """
    if i % dilation != j % dilation:
        return False
    g = i % dilation
    group_len = len(range(g, length, dilation))
    kernel = min(kernel, group_len)
    p, pj = i // dilation, j // dilation
    leader = min((p // stride) * stride + stride // 2, group_len - 1)
    left, right = kernel // 2, kernel // 2 + (kernel % 2 - 1)
    centre = min(max(leader, left), group_len - 1 - right)
    return centre - left <= pj <= centre + right


def brute_force_mask(grid, kernel, dilation, stride):
    t, h, w = grid
    coords = [(a, b, c) for a in range(t) for b in range(h) for c in range(w)]
    m = torch.zeros(len(coords), len(coords), dtype=torch.bool)
    for qi, qc in enumerate(coords):
        for ki, kc in enumerate(coords):
            m[qi, ki] = all(natten_1d(qc[a], kc[a], grid[a], kernel[a], dilation[a], stride[a]) for a in range(3))
    return m


axis = st.tuples(st.integers(1, 6), st.integers(1, 7), st.integers(1, 3), st.integers(1, 4))


@settings(max_examples=40, deadline=None)
@given(st.tuples(axis, axis, axis))
def test_neighborhood_mask_matches_brute_force(axes):
    grid = tuple(a[0] for a in axes)
    kernel = tuple(a[1] for a in axes)
    dilation = tuple(a[2] for a in axes)
    stride = tuple(min(a[3], a[1]) for a in axes)
    p = ds.Neighborhood(kernel, dilation=dilation, stride=stride)
    got = p.mask(ds.TokenLayout(grid))
    assert torch.equal(got, brute_force_mask(grid, kernel, dilation, stride))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 45), st.integers(1, 5), st.integers(1, 8))
def test_axis_windows_match_the_rule(length, kernel, dilation, stride):
    stride = min(stride, kernel)
    lo, hi = axis_windows(length, kernel, dilation, stride)
    for i in range(length):
        keys = [j for j in range(length) if natten_1d(i, j, length, kernel, dilation, stride)]
        assert keys == list(range(int(lo[i]), int(hi[i]) + 1, dilation))
        group_len = len(range(i % dilation, length, dilation))
        assert len(keys) == min(kernel, group_len)  # the window always holds the whole kernel


@settings(max_examples=40, deadline=None)
@given(st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(1, 9)),
       st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
       st.tuples(*[st.sampled_from([1, 3])] * 3))
def test_sliding_tile_is_strided_neighborhood(grid, tile, window):
    """Odd windows only: even ones are tile-aligned instead (tests/test_sliding_tile_even.py)."""
    lay = ds.TokenLayout(grid)
    sta = ds.SlidingTile(tile, window)
    nbhd = ds.Neighborhood(tuple(t * w for t, w in zip(tile, window)), stride=tile)
    assert torch.equal(sta.mask(lay), nbhd.mask(lay))
    # Every query of a tile attends exactly the tiles of its window when the tile divides the grid.
    if all(n % t == 0 for n, t in zip(grid, tile)) and all(w % 2 for w in window):
        m = sta.mask(lay).reshape(*grid, *grid)
        for a in range(3):
            tiles = grid[a] // tile[a]
            expect = tiles if window[a] >= tiles else window[a]
            q0 = [0, 0, 0]
            row = m[tuple(q0)]
            kept_axis = row.any(dim=tuple(x for x in range(3) if x != a)).sum().item()
            assert kept_axis == min(grid[a], expect * tile[a])


def test_kernel_larger_than_axis_covers_it():
    lay = ds.TokenLayout((3, 4, 5))
    assert ds.Neighborhood((7, 9, 11)).mask(lay).all()
    assert ds.Neighborhood((7, 9, 11)).density(lay) == 1.0
    # and only that axis: the others keep their window
    m = ds.Neighborhood((9, 3, 3)).mask(lay).reshape(3, 4, 5, 3, 4, 5)
    assert m[0, 0, 0, :, 0, 0].all() and not m[0, 0, 0, 0, 0, :].all()


def test_text_tokens_are_global_both_ways():
    for pos in ("first", "last"):
        lay = ds.TokenLayout((2, 3, 4), text_len=5, text_position=pos)
        m = ds.Neighborhood((1, 1, 1)).mask(lay)
        t0 = lay.text_start
        assert m[t0:t0 + 5].all() and m[:, t0:t0 + 5].all()
        v0 = lay.video_start
        assert torch.equal(m[v0:v0 + 24, v0:v0 + 24], torch.eye(24, dtype=torch.bool))


pattern_strategy = st.one_of(
    st.just(ds.Full()),
    st.builds(lambda k, d, s: ds.Neighborhood(k, dilation=d, stride=tuple(min(a, b) for a, b in zip(s, k))),
              st.tuples(*[st.integers(1, 9)] * 3), st.tuples(*[st.integers(1, 3)] * 3),
              st.tuples(*[st.integers(1, 4)] * 3)),
    st.builds(ds.SlidingTile, st.tuples(*[st.integers(1, 8)] * 3), st.tuples(*[st.integers(1, 5)] * 3)),
    st.builds(lambda b, x: ds.BlockSparse(b, topk=x), st.tuples(*[st.integers(1, 8)] * 3),
              st.floats(0.01, 1.0)),
    st.builds(lambda b, x: ds.BlockSparse(b, threshold=x), st.integers(1, 8), st.floats(0.01, 1.0)),
)


@settings(max_examples=100, deadline=None)
@given(pattern_strategy)
def test_to_dict_round_trips_through_json(p):
    data = json.loads(json.dumps(p.to_dict()))
    assert ds.Pattern.from_dict(data) == p
    assert type(ds.Pattern.from_dict(data)) is type(p)


def test_ints_broadcast_and_spec_strings():
    assert ds.Neighborhood(3) == ds.Neighborhood((3, 3, 3))
    assert ds.parse_pattern("sliding-tile:tile=4x4x4,window=3x3x3") == ds.SlidingTile(4, 3)
    assert ds.parse_pattern("neighborhood:kernel=3x9x9,dilation=1x2x2") == ds.Neighborhood((3, 9, 9), dilation=(1, 2, 2))
    assert ds.parse_pattern("block-sparse:block=4x8x8,topk=0.2") == ds.BlockSparse((4, 8, 8), topk=0.2)
    assert ds.parse_pattern("full") == ds.Full()


@pytest.mark.parametrize("grid", [(3, 7, 11), (5, 12, 10), (1, 9, 13)])
@pytest.mark.parametrize("pattern", [ds.Neighborhood((3, 5, 5)), ds.Neighborhood((2, 4, 6), dilation=(1, 2, 1), stride=(1, 2, 3)),
                                     ds.SlidingTile((1, 4, 4), (3, 1, 3)), ds.SlidingTile((2, 2, 2), 3)])
@pytest.mark.parametrize("text_len", [0, 6])
def test_density_counts_pairs(grid, pattern, text_len):
    lay = ds.TokenLayout(grid, text_len=text_len)
    m = pattern.mask(lay)
    exact = m.double().mean().item()
    assert pattern.density(lay, exact=True) == pytest.approx(exact, rel=1e-9)
    assert exact - 1e-12 <= pattern.density(lay) <= 1.0


def test_sliding_tile_block_density_is_exact_when_tiles_divide():
    lay = ds.TokenLayout((8, 16, 16))
    p = ds.SlidingTile((2, 4, 4), (3, 3, 3))
    assert p.density(lay) == pytest.approx(p.density(lay, exact=True))
    assert p.density(lay) == pytest.approx((3 / 4) ** 3)


def test_block_sparse_density_and_dense_limits():
    lay = ds.TokenLayout((4, 8, 8))
    q, k = torch.randn(2, 256, 2, 16), torch.randn(2, 256, 2, 16)
    for p in (ds.BlockSparse((2, 4, 4), topk=1.0), ds.BlockSparse((2, 4, 4), threshold=1.0)):
        assert p.mask(lay, q, k).all()
        assert p.density(lay, q=q, k=k) == 1.0
    p = ds.BlockSparse((2, 4, 4), topk=0.25)
    m = p.mask(lay, q, k)
    assert m.double().mean().item() == pytest.approx(p.density(lay, q=q, k=k))
    assert p.density(lay) == pytest.approx(0.25)
    # own block always kept
    assert m.diagonal(dim1=-2, dim2=-1).all()


@pytest.mark.parametrize("make, match", [
    (lambda: ds.Neighborhood(0), "kernel"),
    (lambda: ds.Neighborhood(2.5), "kernel"),
    (lambda: ds.Neighborhood((3, 3)), "kernel"),
    (lambda: ds.Neighborhood(3, dilation=-1), "dilation"),
    (lambda: ds.Neighborhood(3, stride=4), "stride"),
    (lambda: ds.Neighborhood(3, stride=0), "stride"),
    (lambda: ds.SlidingTile(0, 3), "tile"),
    (lambda: ds.SlidingTile(4, (3, 3, 0)), "window"),
    (lambda: ds.BlockSparse(4), "topk"),
    (lambda: ds.BlockSparse(4, topk=0.5, threshold=0.5), "topk"),
    (lambda: ds.BlockSparse(4, topk=0.0), "topk"),
    (lambda: ds.BlockSparse(4, topk=1.5), "topk"),
    (lambda: ds.BlockSparse(4, threshold=-0.1), "threshold"),
    (lambda: ds.BlockSparse((4, 0, 4), topk=0.5), "block"),
    (lambda: ds.TokenLayout((4, 4)), "grid"),
    (lambda: ds.TokenLayout((4, 4, 4), text_position="middle"), "text_position"),
    (lambda: ds.TokenLayout((4, 4, 4), text_len=-1), "text_len"),
    (lambda: ds.Pattern.from_dict({"kind": "spiral"}), "spiral"),
    (lambda: ds.parse_pattern("spiral:size=3"), "spiral"),
])
def test_bad_pattern_arguments_are_named(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
