"""The CPU kernel against the float64 reference: every pattern, odd grids, text, masks, dtypes."""

import pytest
import torch

import dit_sparse as ds
from attention_cases import ATOL, PATTERNS_SMALL, make_key_mask, make_qkv, mask_rows, reference_rows

LAYOUTS = [
    ds.TokenLayout((3, 7, 11)),
    ds.TokenLayout((3, 7, 11), text_len=6, text_position="first"),
    ds.TokenLayout((2, 5, 9), text_len=7, text_position="last"),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"{l.grid}-text{l.text_len}{l.text_position}")
@pytest.mark.parametrize("pattern", PATTERNS_SMALL, ids=repr)
@pytest.mark.parametrize("with_mask", [False, True])
def test_cpu_matches_reference(layout, pattern, with_mask):
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=64)
    km = make_key_mask(layout) if with_mask else None
    ref = ds.reference_attention(q, k, v, pattern, layout, key_mask=km)
    out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=km, backend="cpu")
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, atol=ATOL[torch.float32], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("pattern", [ds.Neighborhood((3, 7, 7)), ds.SlidingTile((1, 6, 8), 3),
                                     ds.BlockSparse((2, 8, 8), topk=0.3)], ids=repr)
def test_cpu_odd_big_grid_dtypes(dtype, head_dim, pattern):
    """Grid (5, 30, 52): no tile divides it. Reference on a sample of query rows."""
    layout = ds.TokenLayout((5, 30, 52), text_len=5, text_position="last")
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=head_dim, dtype=dtype)
    km = make_key_mask(layout)
    out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=km, backend="cpu")
    rows = torch.cat([torch.randperm(layout.seq_len)[:200], torch.arange(layout.text_start, layout.text_start + 5)])
    ref = reference_rows(q, k, v, pattern, layout, rows, key_mask=km)
    err = (out[:, rows].double() - ref).abs().max().item()
    # Low-precision runs are judged against a dense SDPA in the same dtype on the same rows
    # (FlashAttention's rule: err <= 2 * err_of_pytorch_in_same_dtype + eps).
    if dtype != torch.float32:
        mask = mask_rows(pattern, layout, q, k, rows) & km[:, None, None, :]
        base = torch.nn.functional.scaled_dot_product_attention(
            q[:, rows].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask).transpose(1, 2)
        base_err = (base.double() - ref).abs().max().item()
        assert err <= 2 * base_err + ATOL[dtype] / 4, (err, base_err)
    else:
        assert err <= ATOL[dtype]


def test_rows_with_no_key_are_zero():
    layout = ds.TokenLayout((2, 4, 4), text_len=3)
    q, k, v = make_qkv(layout, batch=1, heads=2, head_dim=16)
    km = torch.zeros(1, layout.seq_len, dtype=torch.bool)
    km[0, 3:3 + 16] = True  # only the first frame's video keys stay
    for pattern in (ds.Neighborhood((1, 3, 3)), ds.SlidingTile((1, 2, 2), 1), ds.BlockSparse((1, 2, 2), topk=0.2), ds.Full()):
        out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=km, backend="cpu")
        ref = ds.reference_attention(q, k, v, pattern, layout, key_mask=km)
        assert torch.isfinite(out).all()
        frame2 = out[0, 3 + 16:]
        if not isinstance(pattern, (ds.Full, ds.BlockSparse)):
            assert (frame2 == 0).all()  # their windows hold only masked keys
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)


def test_all_keys_masked_gives_zeros_not_nan():
    layout = ds.TokenLayout((2, 3, 3))
    q, k, v = make_qkv(layout, batch=2, heads=1, head_dim=8)
    km = torch.zeros(2, layout.seq_len, dtype=torch.bool)
    for pattern in PATTERNS_SMALL:
        out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=km, backend="cpu")
        assert (out == 0).all()


def test_sparse_differs_from_dense_and_full_window_equals_dense():
    layout = ds.TokenLayout((4, 10, 12), text_len=4)
    q, k, v = make_qkv(layout, batch=1, heads=2, head_dim=32)
    dense = ds.sparse_attention(q, k, v, ds.Full(), layout)
    whole = ds.sparse_attention(q, k, v, ds.Neighborhood((4, 10, 12)), layout)
    local = ds.sparse_attention(q, k, v, ds.Neighborhood((3, 3, 3)), layout)
    torch.testing.assert_close(whole, dense, atol=2e-5, rtol=0)
    assert (local - dense).abs().max() > 1e-2


def test_scale_is_used():
    layout = ds.TokenLayout((2, 6, 6))
    q, k, v = make_qkv(layout, batch=1, heads=1, head_dim=16)
    p = ds.Neighborhood((1, 3, 3))
    out = ds.sparse_attention(q, k, v, p, layout, scale=0.05)
    ref = ds.reference_attention(q, k, v, p, layout, scale=0.05)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)
    assert (out - ds.sparse_attention(q, k, v, p, layout)).abs().max() > 1e-3


def test_non_contiguous_inputs():
    layout = ds.TokenLayout((2, 5, 6))
    q, k, v = make_qkv(layout, batch=2, heads=3, head_dim=16)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    p = ds.Neighborhood((1, 3, 3))
    torch.testing.assert_close(ds.sparse_attention(qt, kt, vt, p, layout), ds.sparse_attention(q, k, v, p, layout))


def test_torch_compile_does_not_break():
    layout = ds.TokenLayout((2, 4, 4), text_len=2)
    q, k, v = make_qkv(layout, batch=1, heads=2, head_dim=16)
    p = ds.SlidingTile((1, 2, 2), (1, 3, 3))

    def f(q, k, v):
        return ds.sparse_attention(q * 2, k, v, p, layout) + 1

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))


@pytest.mark.parametrize("pattern", PATTERNS_SMALL + [ds.SlidingTile((2, 4, 8), (3, 5, 3))], ids=repr)
def test_cpu_every_pattern_on_5x30x52(pattern):
    """Every pattern on the (5, 30, 52) grid, text first, key mask, batch 2 (sampled rows)."""
    layout = ds.TokenLayout((5, 30, 52), text_len=6, text_position="first")
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=64)
    km = make_key_mask(layout)
    out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=km, backend="cpu")
    rows = torch.cat([torch.arange(6), torch.randperm(layout.seq_len - 6)[:150] + 6, torch.tensor([layout.seq_len - 1])])
    ref = reference_rows(q, k, v, pattern, layout, rows, key_mask=km)
    assert (out[:, rows].double() - ref).abs().max().item() <= ATOL[torch.float32]


@pytest.mark.parametrize("lengths", [[5, 5, 5], [100, 10, 90, 50, 81, 79, 1, 64], [3], list(range(1, 40))])
def test_ragged_length_groups_cover_rows_and_bound_padding(lengths):
    from dit_sparse.kernels.cpu.attention import _length_groups

    t = torch.tensor(lengths)
    groups = _length_groups(t, ratio=0.8, max_groups=4)
    rows = torch.cat([r for r, _ in groups])
    assert sorted(rows.tolist()) == list(range(len(lengths)))  # every row exactly once
    assert len(groups) <= 4
    for r, n in groups:
        assert n == int(t[r].max())  # padded to the group's longest
    for r, n in groups[:-1]:  # only the last group may exceed the 1 / ratio padding bound
        assert int(t[r].min()) >= 0.8 * n


def test_ragged_block_sparse_with_uneven_head_lengths_matches_reference():
    # 13x30x52-like raggedness in small: every axis has a short last block, so heads that
    # choose different blocks gather different numbers of keys
    layout = ds.TokenLayout((5, 9, 11), text_len=3, text_position="last")
    pattern = ds.BlockSparse((2, 4, 4), topk=0.2)
    q, k, v = make_qkv(layout, heads=6, head_dim=32, batch=2, seed=5)
    key_mask = make_key_mask(layout)
    out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=key_mask, backend="cpu")
    ref = ds.reference_attention(q, k, v, pattern, layout, key_mask=key_mask)
    torch.testing.assert_close(out, ref, atol=ATOL[torch.float32], rtol=0)
