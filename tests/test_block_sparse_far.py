"""Far fields on block-sparse patterns: the key blocks a query block drops become pooled keys.

Oracles that do not share code with the library's far field:

* pooled keys of boxes whose keys and values are all equal weigh exactly what their members
  would (the ``log(count)`` bias), so with such inputs and boxes that tile the blocks, a far
  field gives dense attention back;
* a brute-force float64 computation from the exact pattern's own mask and box means taken
  here, for random inputs (pool equal to block: one pooled key per dropped block).
"""

import math

import pytest
import torch

import dit_sparse as ds
from dit_sparse.patterns import parse_pattern
from dit_sparse.tiling import BlockGrid

CASES = [  # grid, block, pool, text_len, text_position, sinks, key mask
    ((3, 8, 8), (1, 4, 4), (1, 4, 4), 0, "first", 0, False),
    ((3, 7, 9), (1, 4, 4), (1, 4, 4), 5, "last", 0, True),     # ragged blocks: the packed CPU path
    ((4, 8, 8), (2, 4, 4), (1, 2, 2), 4, "first", 3, True),    # boxes inside blocks, sinks
    ((5, 6, 10), (2, 3, 5), (2, 3, 5), 3, "last", 2, False),
]


def _inputs(grid, text_len, position, key_mask, batch=2, heads=3, dim=16, seed=0):
    layout = ds.TokenLayout(grid=grid, text_len=text_len, text_position=position)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, layout.seq_len, heads, dim, generator=g) for _ in range(3))
    mask = None
    if key_mask:
        mask = torch.rand(batch, layout.seq_len, generator=g) > 0.25
        mask[:, 0] = True
    return layout, q, k, v, mask


def _box_constant(x, layout, pool):
    """``x`` with every video token replaced by the first token of its pool box."""
    grid = BlockGrid(layout.grid, pool)
    box = grid.token_block()
    first = torch.full((grid.num_blocks,), layout.video_len, dtype=torch.int64)
    first = first.scatter_reduce(0, box, torch.arange(layout.video_len), reduce="amin")
    out = x.clone()
    v0 = layout.video_start
    out[:, v0:v0 + layout.video_len] = x[:, v0 + first[box]]
    return out


def _dense(q, k, v, key_mask):
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = qd @ kd.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], -math.inf)
    return (torch.softmax(scores, -1) @ vd).transpose(1, 2)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-pool{c[2]}-text{c[3]}{c[4]}-sinks{c[5]}")
def test_equal_keys_per_box_give_dense_back(case):
    grid, block, pool, text_len, position, sinks, km = case
    layout, q, k, v, key_mask = _inputs(grid, text_len, position, km)
    if key_mask is not None:  # box means over kept keys: keep whole boxes or nothing
        v0, box = layout.video_start, BlockGrid(layout.grid, pool).token_block()
        keep_box = torch.rand(q.shape[0], int(box.max()) + 1, generator=torch.Generator().manual_seed(1)) > 0.2
        key_mask[:, v0:v0 + layout.video_len] = keep_box[:, box]
    k, v = _box_constant(k, layout, pool), _box_constant(v, layout, pool)
    pattern = ds.BlockSparse(block=block, topk=0.25, far=ds.FarField(pool=pool, sinks=sinks))
    expected = _dense(q, k, v, key_mask)
    sparse = pattern.exact_part()
    dropped = ds.sparse_attention(q, k, v, sparse, layout, key_mask=key_mask, backend="cpu").double()
    assert (dropped - expected).abs().max() > 1e-2  # the exact part alone is not dense here
    for fn in (ds.reference_attention, lambda *a, **kw: ds.sparse_attention(*a, **kw, backend="cpu")):
        out = fn(q, k, v, pattern, layout, key_mask=key_mask).double()
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


def _brute_force(q, k, v, pattern, layout, key_mask):
    """Float64, pool == block, no sinks: exact keys from the exact pattern's mask, then one
    key per block the query's block did not keep (mean of its kept keys, bias log(count))."""
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    b, h, s, d = qd.shape
    scale = d ** -0.5
    exact = pattern.exact_part().mask(layout, q, k)  # [B, H, S, S]
    mask = exact if key_mask is None else exact & key_mask[:, None, None, :]
    v0, nv = layout.video_start, layout.video_len
    block_of = BlockGrid(layout.grid, pattern.block).token_block()
    nb = int(block_of.max()) + 1
    out = torch.zeros(b, h, s, d, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(s):
                logits = [qd[bi, hi, i] @ kd[bi, hi, j] * scale for j in range(s) if mask[bi, hi, i, j]]
                values = [vd[bi, hi, j] for j in range(s) if mask[bi, hi, i, j]]
                if v0 <= i < v0 + nv:
                    own = block_of[i - v0]
                    kept = {int(block_of[j - v0]) for j in range(v0, v0 + nv) if exact[bi, hi, i, j]}
                    assert int(own) in kept
                    for blk in range(nb):
                        if blk in kept:
                            continue
                        members = [v0 + t for t in range(nv) if block_of[t] == blk
                                   and (key_mask is None or key_mask[bi, v0 + t])]
                        if not members:
                            continue
                        km = torch.stack([kd[bi, hi, j] for j in members]).mean(0)
                        vm = torch.stack([vd[bi, hi, j] for j in members]).mean(0)
                        logits.append(qd[bi, hi, i] @ km * scale + math.log(len(members)))
                        values.append(vm)
                if logits:
                    p = torch.softmax(torch.stack(logits), 0)
                    out[bi, hi, i] = (p[:, None] * torch.stack(values)).sum(0)
    return out.transpose(1, 2)


@pytest.mark.parametrize("grid,block,text_len,position,key_mask", [
    ((2, 4, 6), (1, 2, 3), 3, "first", False),
    ((3, 5, 4), (2, 2, 2), 2, "last", True),  # ragged
])
def test_matches_brute_force(grid, block, text_len, position, key_mask):
    layout, q, k, v, mask = _inputs(grid, text_len, position, key_mask, heads=2, dim=8)
    pattern = ds.BlockSparse(block=block, topk=0.3, far=ds.FarField(pool=block))
    expected = _brute_force(q, k, v, pattern, layout, mask)
    for fn in (ds.reference_attention, lambda *a, **kw: ds.sparse_attention(*a, **kw, backend="cpu")):
        torch.testing.assert_close(fn(q, k, v, pattern, layout, key_mask=mask).double(), expected,
                                   atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-pool{c[2]}-sinks{c[5]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_matches_reference(case, dtype):
    grid, block, pool, text_len, position, sinks, km = case
    layout, q, k, v, key_mask = _inputs(grid, text_len, position, km)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    pattern = ds.BlockSparse(block=block, topk=0.3, far=ds.FarField(pool=pool, sinks=sinks))
    ref = ds.reference_attention(q, k, v, pattern, layout, key_mask=key_mask).float()
    out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=key_mask, backend="cpu").float()
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


def test_threshold_selection_with_far_field():
    layout, q, k, v, _ = _inputs((3, 8, 8), 2, "first", False)
    pattern = ds.BlockSparse(block=(1, 4, 4), threshold=0.6, far=ds.FarField(pool=(1, 4, 4)))
    ref = ds.reference_attention(q, k, v, pattern, layout)
    torch.testing.assert_close(ds.sparse_attention(q, k, v, pattern, layout, backend="cpu"), ref,
                               atol=2e-5, rtol=1e-5)


def test_density_counts_pooled_keys():
    layout, q, k, v, _ = _inputs((4, 8, 8), 0, "first", False)
    exact = ds.BlockSparse(block=(2, 4, 4), topk=0.25)
    far = ds.BlockSparse(block=(2, 4, 4), topk=0.25, far=(2, 4, 4))
    nb, s = 2 * 2 * 2, layout.seq_len
    keep = math.ceil(0.25 * nb)
    # pool == block: every query sees nb - keep pooled keys
    assert far.density(layout) == pytest.approx(exact.density(layout) + s * (nb - keep) / s ** 2)
    assert far.density(layout, q=q, k=k) == pytest.approx(far.density(layout))
    # from the data: count the pooled keys each query sees from the exact mask
    mask = exact.mask(layout, q, k)  # [B, H, S, S]
    fine = ds.BlockSparse(block=(2, 4, 4), topk=0.25, far=(1, 2, 2))
    boxes = BlockGrid(layout.grid, (1, 2, 2)).token_block()
    pooled = 0.0
    for bi in range(mask.shape[0]):
        for hi in range(mask.shape[1]):
            for i in range(s):
                near = set(boxes[mask[bi, hi, i]].tolist())
                pooled += int(boxes.max()) + 1 - len(near)
    pooled /= mask.shape[0] * mask.shape[1]
    assert fine.density(layout, q=q, k=k) == pytest.approx(exact.density(layout, q=q, k=k) + pooled / s ** 2)


def test_spec_dict_and_errors():
    pattern = ds.BlockSparse(block=(2, 4, 4), topk=0.3, far=ds.FarField(pool=(2, 4, 4), sinks=3))
    assert parse_pattern(pattern.spec) == pattern
    assert parse_pattern("block-sparse:block=2x4x4,topk=0.3,far=2x4x4,sinks=3") == pattern
    assert ds.Pattern.from_dict(pattern.to_dict()) == pattern
    assert pattern.exact_part() == ds.BlockSparse(block=(2, 4, 4), topk=0.3)
    from dit_sparse.plan import pattern_spec

    assert parse_pattern(pattern_spec(pattern)) == pattern  # the CLI's labels
    with pytest.raises(ValueError, match="pool"):
        ds.BlockSparse(block=4, topk=0.2, far=(0, 8, 8))
    with pytest.raises(ValueError, match="sinks"):
        parse_pattern("block-sparse:block=2x4x4,topk=0.3,sinks=3")


def test_profiler_head_density_counts_pooled_keys():
    from dit_sparse.selection import head_density

    layout, q, k, _, _ = _inputs((4, 8, 8), 3, "last", False)
    pattern = ds.BlockSparse(block=(2, 4, 4), topk=0.25, far=(1, 2, 2))
    per_head = head_density(pattern, layout, q, k)
    binary = head_density(pattern.exact_part(), layout, q, k)
    assert bool((per_head > binary).all())
    assert float(per_head.mean()) == pytest.approx(pattern.density(layout, q=q, k=k))
