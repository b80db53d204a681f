"""The Triton kernel's far-field loop, through the Triton interpreter (TRITON_INTERPRET=1, set in
conftest.py), against the float64 definition ``ds.reference_attention``; and the per-query-block
far tables (``dit_sparse.blockmask.FarBlocks``) against a row-by-row derivation from
``FarFieldTables.token_far``.

fp32 and fp16 only: the interpreter multiplies raw bits in a bf16 ``tl.dot``
(triton-lang/triton#11584); bf16 is covered by the ahead-of-time build (test_triton_aot.py).
"""

import math

import pytest
import torch

import dit_sparse as ds
from dit_sparse import env
from dit_sparse.blockmask import static_block_mask
from dit_sparse.farfield import far_field_for
from dit_sparse.kernels.triton_attn.launcher import block_shape
from attention_cases import ATOL, case_id, case_layout, make_key_mask, make_qkv

needs_interpreter = pytest.mark.skipif(not env.triton_interpret(),
                                       reason="needs TRITON_INTERPRET=1 before triton is imported")

# Small on purpose: the interpreter runs every program in Python. Odd grids that neither the
# kernel's blocks nor the pool boxes divide; pools smaller and larger than a query block.
CASES = [
    ((3, 7, 9), 0, "first", ds.Neighborhood((3, 3, 3), far=(1, 4, 4))),
    ((2, 9, 12), 5, "first", ds.SlidingTile((1, 3, 4), (1, 1, 1), far=(1, 3, 4))),
    ((3, 6, 7), 4, "last", ds.Neighborhood((2, 3, 4), dilation=(1, 2, 1), far=(3, 5, 2))),
    ((4, 5, 11), 3, "last", ds.Neighborhood((1, 3, 5), stride=(1, 1, 2), far=(2, 2, 3))),
]


def _check(pattern, layout, dtype, head_dim, key_mask, batch=2, heads=1):
    q, k, v = make_qkv(layout, batch=batch, heads=heads, head_dim=head_dim, dtype=dtype)
    ref = ds.reference_attention(q, k, v, pattern, layout, key_mask=key_mask)
    out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=key_mask, backend="triton")
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), ref.float(), atol=ATOL[dtype], rtol=0)
    return out


@needs_interpreter
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "key-mask"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_far_field_fp32(case, masked):
    layout = case_layout(case)
    _check(case[3], layout, torch.float32, 64, make_key_mask(layout) if masked else None)


@needs_interpreter
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("case", [CASES[1], CASES[2]], ids=case_id)
def test_far_field_fp16(case, head_dim):
    layout = case_layout(case)
    _check(case[3], layout, torch.float16, head_dim, make_key_mask(layout))


@needs_interpreter
def test_far_field_head_dim_128_fp32_two_heads():
    layout = ds.TokenLayout((2, 9, 12), text_len=5, text_position="last")
    _check(ds.SlidingTile((1, 4, 4), (1, 1, 1), far=(1, 4, 4)), layout, torch.float32, 128,
           make_key_mask(layout), heads=2)


@needs_interpreter
def test_far_field_emptied_boxes_and_rows():
    """Boxes whose keys the mask all drops (bias -inf), rows that see only pooled keys, and
    rows that see nothing at all (all keys masked: 0, never NaN)."""
    layout = ds.TokenLayout((2, 6, 8), text_len=3, text_position="first")
    pattern = ds.Neighborhood((1, 3, 3), far=(1, 3, 4))
    km = torch.ones(2, layout.seq_len, dtype=torch.bool)
    v0 = layout.video_start
    video = km[:, v0:].view(2, 2, 6, 8)
    video[0, 0, :3, :4] = False   # batch 0: a whole box of frame 0 is gone
    video[1, 1] = False           # batch 1: frame 1 is gone, exact and pooled alike
    video[1, 0, :, 4:] = False    # and half of frame 0: its rows there see only pooled keys
    km[1, :3] = False             # and no text: frame 1's rows see nothing but pooled keys
    out = _check(pattern, layout, torch.float32, 32, km)
    assert torch.isfinite(out).all()
    km[1, v0:] = False            # batch 1 sees no key at all
    out = _check(pattern, layout, torch.float32, 32, km)
    assert torch.isfinite(out).all() and (out[1] == 0).all()


@needs_interpreter
def test_unit_pools_through_triton_are_full_attention():
    """Boxes of one token: every key not exact is its own pooled key with bias log(1) = 0."""
    layout = ds.TokenLayout((2, 5, 7), text_len=4)
    q, k, v = make_qkv(layout, batch=1, heads=2, head_dim=32)
    out = ds.sparse_attention(q, k, v, ds.Neighborhood((1, 3, 3), far=(1, 1, 1)), layout, backend="triton")
    torch.testing.assert_close(out, ds.reference_attention(q, k, v, ds.Full(), layout),
                               atol=ATOL[torch.float32], rtol=0)


@needs_interpreter
def test_far_field_triton_equals_cpu_backend():
    layout = case_layout(CASES[3])
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=32)
    km = make_key_mask(layout)
    pattern = CASES[3][3]
    torch.testing.assert_close(ds.sparse_attention(q, k, v, pattern, layout, key_mask=km, backend="triton"),
                               ds.sparse_attention(q, k, v, pattern, layout, key_mask=km, backend="cpu"),
                               atol=2 * ATOL[torch.float32], rtol=0)


def _rows_of_blocks(layout, q_block):
    """Video token indices of every query block's valid rows, by plain loops."""
    t, h, w = layout.grid
    nq = [-(-n // b) for n, b in zip(layout.grid, q_block)]
    blocks = []
    for bt in range(nq[0]):
        for bh in range(nq[1]):
            for bw in range(nq[2]):
                blocks.append([(it * h + ih) * w + iw
                               for it in range(bt * q_block[0], min(t, (bt + 1) * q_block[0]))
                               for ih in range(bh * q_block[1], min(h, (bh + 1) * q_block[1]))
                               for iw in range(bw * q_block[2], min(w, (bw + 1) * q_block[2]))])
    return blocks


@pytest.mark.parametrize("q_tokens", [16, 64, 128])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_far_blocks_match_the_rows(case, q_tokens):
    """Per query block: the unchecked list is exactly the boxes every row sees; the checked
    pairs (far box, query box) are exactly the boxes some rows (not all) see, each with every
    query box of the block that sees it; both in increasing order; text blocks list nothing."""
    layout, pattern = case_layout(case), case[3]
    q_block = block_shape(q_tokens, (1, 8, 8))
    bm = static_block_mask(pattern, layout, q_block, q_block)
    fb = bm.far
    tables = far_field_for(pattern, layout)
    token_far = tables.token_far()  # [n, nb]
    assert fb.num_boxes == tables.num_boxes
    blocks = _rows_of_blocks(layout, q_block)
    assert bm.num_video_q_blocks == len(blocks)
    for i, rows in enumerate(blocks):
        seen = token_far[rows]
        full = fb.full_far_indices[0, i, :fb.full_far_num_boxes[0, i]].tolist()
        assert full == seen.all(0).nonzero().flatten().tolist()
        n = fb.far_num_boxes[0, i]
        pairs = list(zip(fb.far_query_boxes[0, i, :n].tolist(), fb.far_indices[0, i, :n].tolist()))
        partly = seen.any(0) & ~seen.all(0)
        want = sorted({(int(tables.token_box[r]), f) for r in rows for f in range(tables.num_boxes)
                       if partly[f] and token_far[r, f]})
        assert pairs == want
    n_text_blocks = math.ceil(layout.text_len / math.prod(q_block))
    assert fb.far_num_boxes.shape[1] == len(blocks) + n_text_blocks
    assert not fb.far_num_boxes[0, len(blocks):].any() and not fb.full_far_num_boxes[0, len(blocks):].any()


def test_patterns_without_a_far_field_have_no_far_tables():
    layout = ds.TokenLayout((2, 5, 7), text_len=3)
    for pattern in (ds.Full(), ds.Neighborhood((1, 3, 3)), ds.SlidingTile((1, 4, 4), (1, 3, 3))):
        assert static_block_mask(pattern, layout, (1, 4, 8), (1, 4, 8)).far is None
    far = ds.Neighborhood((1, 3, 3), far=(1, 2, 2))
    exact = static_block_mask(far.exact_part(), layout, (1, 4, 8), (1, 4, 8))
    with_far = static_block_mask(far, layout, (1, 4, 8), (1, 4, 8))
    assert torch.equal(with_far.to_dense(), exact.to_dense())
    assert "far field: pool=(1, 2, 2)" in str(with_far)
