"""The Triton kernel's far-field sinks, through the Triton interpreter (TRITON_INTERPRET=1, set in
conftest.py), against the float64 definition ``ds.reference_attention``.

Sinks (``FarField(sinks=N)``): per batch and head, the N video keys scoring highest against the
mean video query leave their boxes' means and counts, and every video query whose pool box is
not near a sink's box sees it as an exact key. fp32 and fp16 only: the interpreter multiplies
raw bits in a bf16 ``tl.dot`` (triton-lang/triton#11584); bf16 is covered by the ahead-of-time
build (test_triton_aot.py).
"""

import pytest
import torch

import dit_sparse as ds
from dit_sparse import env
from dit_sparse.farfield import far_field_for, near_box_ranges, select_sinks, sink_ranges_exact
from attention_cases import ATOL, case_id, case_layout, check_triton, make_key_mask, make_qkv

needs_interpreter = pytest.mark.skipif(not env.triton_interpret(),
                                       reason="needs TRITON_INTERPRET=1 before triton is imported")

# Odd grids that neither the kernel's blocks nor the pool boxes divide; text first, last and
# none; dilation and stride; the last case has more sinks (70) than a key block holds (64 for
# fp32 / head_dim 64), so the sink loop takes two steps.
CASES = [
    ((3, 7, 9), 4, "first", ds.Neighborhood((3, 3, 3), far=ds.FarField((1, 4, 4), sinks=4))),
    ((2, 9, 12), 5, "last", ds.SlidingTile((1, 3, 4), (1, 1, 1), far=ds.FarField((1, 3, 4), sinks=3))),
    ((3, 6, 7), 0, "first", ds.Neighborhood((2, 3, 4), dilation=(1, 2, 1), far=ds.FarField((3, 5, 2), sinks=6))),
    ((4, 5, 11), 3, "last", ds.Neighborhood((1, 3, 5), stride=(1, 1, 2), far=ds.FarField((2, 2, 3), sinks=70))),
]


def _check(pattern, layout, q, k, v, key_mask=None):
    return check_triton(pattern, layout, q, k, v, key_mask, against_cpu=False)


@needs_interpreter
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "key-mask"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sinks_fp32(case, masked):
    layout, pattern = case_layout(case), case[3]
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=64)
    _check(pattern, layout, q, k, v, make_key_mask(layout) if masked else None)


@needs_interpreter
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("case", [CASES[0], CASES[1]], ids=case_id)
def test_sinks_fp16(case, head_dim):
    layout, pattern = case_layout(case), case[3]
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=head_dim, dtype=torch.float16)
    _check(pattern, layout, q, k, v, make_key_mask(layout))


@needs_interpreter
def test_sinks_differ_per_head_and_change_the_output():
    """Each (batch, head) has its own sinks and its own pooled keys; the sinks matter (the
    result differs from the far field without them by far more than the tolerance)."""
    case = CASES[0]
    layout, pattern = case_layout(case), case[3]
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=32)
    idx, _ = select_sinks(q, k, layout, pattern.far.sinks)
    assert not torch.equal(idx[:, 0], idx[:, 1]) and not torch.equal(idx[0], idx[1])
    out = _check(pattern, layout, q, k, v)
    plain = ds.Neighborhood(pattern.kernel, far=pattern.far.pool)
    assert (out - ds.reference_attention(q, k, v, plain, layout)).abs().max() > 100 * ATOL[torch.float32]


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sink_inside_near_boxes_is_not_counted_twice(dtype):
    """A planted sink that dominates the logits of the rows holding it in their exact window:
    those rows (their boxes are near its box) must see it once, exactly; rows of boxes not
    near it see it as a sink. Both kinds of rows exist here."""
    layout = ds.TokenLayout((3, 8, 10), text_len=2, text_position="first")
    pattern = ds.Neighborhood((1, 3, 3), far=ds.FarField((1, 4, 4), sinks=2))
    q, k, v = make_qkv(layout, batch=1, heads=1, head_dim=32)
    v0, (_, h, w) = layout.video_start, layout.grid
    sink = (1 * h + 5) * w + 6  # frame 1, row 5, column 6
    qm = q[0, v0:, 0].mean(0)
    k[0, v0 + sink, 0] = 3.0 * qm / qm.norm() * q.shape[-1] ** 0.5
    q[0, v0:, 0] += 0.5 * qm / qm.norm()  # every row leans toward the planted key
    q, k, v = (x.to(dtype) for x in (q, k, v))
    idx, _ = select_sinks(q, k, layout, 2)
    assert sink in idx[0, 0].tolist()
    exact = pattern.exact_part().mask(layout)[v0:, v0 + sink]
    tables = far_field_for(pattern, layout)
    near_rows = tables.near[tables.token_box, tables.token_box[sink]]
    assert exact.any() and bool((exact <= near_rows).all()) and not bool(near_rows.all())
    _check(pattern, layout, q, k, v)


@needs_interpreter
def test_masked_sink_candidate_and_too_few_kept_keys():
    """Batch 0 masks the key that would be its first sink (another takes its place); batch 1
    keeps fewer video keys than there are sinks (absent sinks contribute nothing)."""
    case = CASES[0]
    layout, pattern = case_layout(case), case[3]
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=32)
    v0 = layout.video_start
    top = int(select_sinks(q, k, layout, pattern.far.sinks)[0][0, 0, 0])
    km = make_key_mask(layout)
    km[0, v0 + top] = False
    km[1, v0:] = False
    km[1, v0 + torch.tensor([3, 40, 100])] = True
    idx, valid = select_sinks(q, k, layout, pattern.far.sinks, km)
    assert top not in idx[0].flatten().tolist() and bool(valid[0].all())
    assert valid[1].sum(-1).tolist() == [3, 3]
    out = _check(pattern, layout, q, k, v, km)
    assert torch.isfinite(out).all()


@needs_interpreter
def test_unit_pools_with_sinks_are_full_attention():
    """Boxes of one token: a sink empties its box (bias -inf) and is seen exactly instead, by
    every row whose box is not near it; together that is full attention."""
    layout = ds.TokenLayout((2, 5, 7), text_len=3, text_position="last")
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=32)
    pattern = ds.Neighborhood((1, 3, 3), far=ds.FarField((1, 1, 1), sinks=5))
    out = ds.sparse_attention(q, k, v, pattern, layout, backend="triton")
    torch.testing.assert_close(out, ds.reference_attention(q, k, v, ds.Full(), layout),
                               atol=ATOL[torch.float32], rtol=0)


@needs_interpreter
def test_sinks_triton_equals_cpu_backend():
    case = CASES[2]
    layout, pattern = case_layout(case), case[3]
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=32)
    km = make_key_mask(layout)
    torch.testing.assert_close(ds.sparse_attention(q, k, v, pattern, layout, key_mask=km, backend="triton"),
                               ds.sparse_attention(q, k, v, pattern, layout, key_mask=km, backend="cpu"),
                               atol=2 * ATOL[torch.float32], rtol=0)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_near_box_ranges_are_the_far_near_table(case):
    """The kernel's per-axis near box ranges: "inside on every axis" is the far field's near
    table, checked box pair by box pair."""
    layout, pattern = case_layout(case), case[3]
    tables = far_field_for(pattern, layout)
    (lo_t, hi_t), (lo_h, hi_h), (lo_w, hi_w) = near_box_ranges(pattern, layout)
    nt, nh, nw = tables.boxes.blocks_per_axis
    assert lo_t.shape == hi_t.shape == (nt,) and lo_h.shape == (nh,) and lo_w.shape == (nw,)
    for qb in range(tables.num_boxes):
        qt, qh, qw = qb // (nh * nw), (qb // nw) % nh, qb % nw
        for kb in range(tables.num_boxes):
            kt, kh, kw = kb // (nh * nw), (kb // nw) % nh, kb % nw
            inside = lo_t[qt] <= kt <= hi_t[qt] and lo_h[qh] <= kh <= hi_h[qh] and lo_w[qw] <= kw <= hi_w[qw]
            assert bool(tables.near[qb, kb]) == bool(inside), (qb, kb)


def test_near_box_ranges_hold_wherever_promised():
    """Over small axes, kernels, dilations, strides and pools: wherever ``sink_ranges_exact``
    promises ranges (dilation 1 or <= pool), every query box's near boxes are one range (or
    ``near_box_ranges`` raises); a dilation above the pool can break that, and is refused."""
    checked = 0
    for n in range(1, 11):
        for kernel in range(1, n + 1):
            for dilation in (1, 2, 3):
                if kernel * dilation > n:
                    continue
                for stride in sorted({1, kernel}):
                    for pool in range(1, n + 1):
                        pattern = ds.Neighborhood((1, 1, kernel), dilation=(1, 1, dilation), stride=(1, 1, stride),
                                                  far=ds.FarField((1, 1, pool), sinks=1))
                        if sink_ranges_exact(pattern):
                            near_box_ranges(pattern, ds.TokenLayout((1, 1, n)))
                            checked += 1
    assert checked > 300
    broken = ds.Neighborhood((1, 1, 3), dilation=(1, 1, 2), far=ds.FarField((1, 1, 1), sinks=1))
    assert not sink_ranges_exact(broken)
    with pytest.raises(ValueError, match="near boxes of axis W are not one range"):
        near_box_ranges(broken, ds.TokenLayout((1, 1, 8)))


@needs_interpreter
def test_triton_refuses_sinks_whose_near_boxes_are_not_ranges():
    layout = ds.TokenLayout((1, 4, 8), text_len=2)
    q, k, v = make_qkv(layout, batch=1, heads=1, head_dim=32)
    pattern = ds.Neighborhood((1, 3, 3), dilation=(1, 1, 2), far=ds.FarField((1, 2, 1), sinks=2))
    with pytest.raises(ValueError, match=r"backend='triton' cannot run this call: its sink check needs dilation 1 "
                                         r"or <= pool on every axis, got dilation=\(1, 1, 2\)"):
        ds.sparse_attention(q, k, v, pattern, layout, backend="triton")
    torch.testing.assert_close(ds.sparse_attention(q, k, v, pattern, layout, backend="cpu"),
                               ds.reference_attention(q, k, v, pattern, layout), atol=ATOL[torch.float32], rtol=0)


def _launch_far_args(b=1, h=2, d=32):
    """Arguments of ``launch`` for a tiny far-field call (1 x 2 x 4 grid, one box)."""
    q = torch.zeros(b, 8, h, d)
    lut = torch.zeros(1, 1, dtype=torch.int32)
    idx = torch.zeros(1, 1, 1, dtype=torch.int32)
    kp = torch.zeros(b, 1, h, d)
    return (q, q, q, None, lut, idx, lut, idx, torch.zeros(6, dtype=torch.int32), None), dict(
        grid=(1, 2, 4), text_len=0, text_start=0, video_start=0, num_video_q_blocks=1, num_q_blocks=1,
        q_block=(1, 2, 4), kv_block=(1, 2, 4), far_keys=(kp, kp, torch.zeros(b, h, 1)),
        far_lut=(lut, idx, lut, idx, idx), boxes=(1, 1, 1), pool=(1, 2, 4), scale=1.0)


def test_launch_checks_the_sink_arguments():
    from dit_sparse.kernels.triton_attn.launcher import launch

    args, kw = _launch_far_args()
    near = torch.zeros(6, dtype=torch.int32)
    sinks = torch.zeros(1, 2, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="sinks and near_ranges come together"):
        launch(*args, **kw, sinks=sinks)
    with pytest.raises(ValueError, match=r"sinks shape \(1, 3, 1\) must be \[B, H, N\] with B=1, H=2"):
        launch(*args, **kw, sinks=torch.zeros(1, 3, 1, dtype=torch.int32), near_ranges=near)
    with pytest.raises(TypeError, match="sinks.dtype=torch.float32 must be an integer type"):
        launch(*args, **kw, sinks=torch.zeros(1, 2, 1), near_ranges=near)
    with pytest.raises(ValueError, match=r"near_ranges must be int32 with 2 \* sum\(boxes=\(1, 1, 1\)\) = 6 elements"):
        launch(*args, **kw, sinks=sinks, near_ranges=torch.zeros(8, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"log_count=\(1, 1\) must be .* \[B, H, nb\] \(with sinks\)"):
        launch(*args, **{**kw, "far_keys": (*kw["far_keys"][:2], torch.zeros(1, 1))}, sinks=sinks, near_ranges=near)
    no_far = {name: value for name, value in kw.items() if name not in ("far_keys", "far_lut")}
    with pytest.raises(ValueError, match="sinks run with a far field only"):
        launch(*args, **no_far, sinks=sinks, near_ranges=near)
