"""The far field: its float64 definition against a brute-force oracle written from the
docstring's rule (loops over tokens and boxes, nothing shared with dit_sparse.farfield), the
CPU kernel against the definition, exactness properties, density, serialisation and errors.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import dit_sparse as ds
from dit_sparse import env
from dit_sparse.patterns import FarField

TOL = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def _boxes(layout, pool):
    """Box id of every video token and the tokens of every box, by plain loops."""
    t, h, w = layout.grid
    pt, ph, pw = (min(p, n) for p, n in zip(pool, layout.grid))
    nh, nw = -(-h // ph), -(-w // pw)
    box_of = []
    for it, ih, iw in itertools.product(range(t), range(h), range(w)):
        box_of.append(((it // pt) * nh + ih // ph) * nw + iw // pw)
    members = {}
    for token, box in enumerate(box_of):
        members.setdefault(box, []).append(token)
    return box_of, members


def oracle(q, k, v, pattern, layout, key_mask=None):
    """Attention with a far field, written out query by query in float64."""
    b, s, heads, d = q.shape
    scale = d ** -0.5
    exact = pattern.exact_part().mask(layout)  # [S, S]: the exact part's own (tested) definition
    v0, n = layout.video_start, layout.video_len
    box_of, members = _boxes(layout, pattern.far.pool)
    q_box_tokens = members  # query boxes are the same boxes
    keep = torch.ones(b, s, dtype=torch.bool) if key_mask is None else key_mask
    out = torch.zeros(b, s, heads, d, dtype=torch.float64)
    qd, kd, vd = q.double(), k.double(), v.double()
    near = {}
    for qb, kb in itertools.product(members, members):
        near[qb, kb] = any(bool(exact[v0 + i, v0 + j]) for i in q_box_tokens[qb] for j in members[kb])
    sinks = {}
    for bi, hi in itertools.product(range(b), range(heads)):  # the top keys against the mean video query
        qm = qd[bi, v0:v0 + n, hi].mean(0)
        scored = [(-float(qm @ kd[bi, v0 + j, hi]), j) for j in range(n) if keep[bi, v0 + j]]
        sinks[bi, hi] = {j for _, j in sorted(scored)[:pattern.far.sinks]}
    for bi, hi, i in itertools.product(range(b), range(heads), range(s)):
        logits, values = [], []
        for j in range(s):
            if exact[i, j] and keep[bi, j]:
                logits.append(float(qd[bi, i, hi] @ kd[bi, j, hi]) * scale)
                values.append(vd[bi, j, hi])
        if v0 <= i < v0 + n:  # a video query: its far boxes
            for kb, toks in members.items():
                if near[box_of[i - v0], kb]:
                    continue
                for j in toks:
                    if j in sinks[bi, hi]:  # a sink of a far box: exact
                        logits.append(float(qd[bi, i, hi] @ kd[bi, v0 + j, hi]) * scale)
                        values.append(vd[bi, v0 + j, hi])
                kept = [v0 + j for j in toks if keep[bi, v0 + j] and j not in sinks[bi, hi]]
                if not kept:
                    continue
                kmean = torch.stack([kd[bi, j, hi] for j in kept]).mean(0)
                vmean = torch.stack([vd[bi, j, hi] for j in kept]).mean(0)
                logits.append(float(qd[bi, i, hi] @ kmean) * scale + math.log(len(kept)))
                values.append(vmean)
        if logits:
            p = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
            out[bi, i, hi] = (p[:, None] * torch.stack(values)).sum(0)
    return out


CASES = [
    ((3, 7, 9), 0, "first", ds.Neighborhood((3, 3, 3), far=(1, 4, 4))),
    ((2, 9, 12), 5, "first", ds.SlidingTile((1, 3, 4), (1, 1, 1), far=(1, 3, 4))),
    ((4, 10, 13), 3, "last", ds.Neighborhood((1, 5, 5), stride=(1, 2, 2), far=(2, 4, 3))),
    ((3, 6, 7), 2, "last", ds.Neighborhood((2, 3, 4), dilation=(1, 2, 1), far=(3, 5, 2))),
    ((3, 7, 9), 2, "first", ds.Neighborhood((3, 3, 3), far=ds.FarField((1, 4, 4), sinks=3))),
    ((2, 9, 12), 0, "first", ds.SlidingTile((1, 3, 4), (1, 1, 1), far=ds.FarField((1, 3, 4), sinks=16))),
]


def _inputs(layout, heads=2, d=8, batch=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, layout.seq_len, heads, d, generator=g).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("masked", [False, True])
def test_reference_equals_brute_force_oracle(case, masked):
    grid, text, position, pattern = CASES[case]
    layout = ds.TokenLayout(grid=grid, text_len=text, text_position=position)
    q, k, v = _inputs(layout, batch=2 if masked else 1)
    key_mask = None
    if masked:
        key_mask = torch.rand(q.shape[0], layout.seq_len, generator=torch.Generator().manual_seed(1)) > 0.3
    ref = ds.reference_attention(q, k, v, pattern, layout, key_mask=key_mask)  # float64 inside, q's dtype out
    assert torch.allclose(ref.double(), oracle(q, k, v, pattern, layout, key_mask), atol=1e-6)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_kernel_equals_reference(case, dtype):
    grid, text, position, pattern = CASES[case]
    layout = ds.TokenLayout(grid=grid, text_len=text, text_position=position)
    q, k, v = _inputs(layout, heads=3, d=64, dtype=dtype)
    key_mask = torch.rand(2, layout.seq_len, generator=torch.Generator().manual_seed(2)) > 0.2
    for mask in (None, key_mask):
        out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=mask, backend="cpu")
        ref = ds.reference_attention(q, k, v, pattern, layout, key_mask=mask)
        assert out.dtype == dtype and out.shape == q.shape
        assert (out.float() - ref.float()).abs().max() <= TOL[dtype]


def test_cpu_kernel_head_dim_128_odd_grid():
    layout = ds.TokenLayout(grid=(5, 11, 13), text_len=4, text_position="last")
    pattern = ds.SlidingTile((2, 4, 4), (1, 3, 1), far=(1, 6, 6))
    q, k, v = _inputs(layout, heads=2, d=128)
    out = ds.sparse_attention(q, k, v, pattern, layout, backend="cpu")
    assert (out - ds.reference_attention(q, k, v, pattern, layout)).abs().max() <= TOL[torch.float32]


def test_unit_pools_are_full_attention():
    """Boxes of one token: every key not exact is its own pooled key with bias log(1) = 0."""
    layout = ds.TokenLayout(grid=(3, 6, 7), text_len=3)
    q, k, v = _inputs(layout)
    pattern = ds.Neighborhood((1, 3, 3), far=(1, 1, 1))
    full = ds.reference_attention(q, k, v, ds.Full(), layout)
    assert torch.allclose(ds.reference_attention(q, k, v, pattern, layout), full, atol=1e-6)
    assert torch.allclose(ds.sparse_attention(q, k, v, pattern, layout), full, atol=1e-5)


def test_a_box_of_equal_keys_weighs_what_its_members_would():
    """Keys and values constant within each box, windows made of whole boxes: the pooled
    key with its log(count) bias is exactly the box's keys, so the result is dense attention."""
    layout = ds.TokenLayout(grid=(2, 8, 12))
    pool = (1, 4, 4)
    box_of, _ = _boxes(layout, pool)
    g = torch.Generator().manual_seed(3)
    per_box_k = torch.randn(1, max(box_of) + 1, 2, 8, generator=g)
    per_box_v = torch.randn(1, max(box_of) + 1, 2, 8, generator=g)
    index = torch.tensor(box_of)
    k, v = per_box_k[:, index], per_box_v[:, index]
    q = torch.randn(1, layout.seq_len, 2, 8, generator=g)
    pattern = ds.SlidingTile(pool, (1, 1, 1), far=pool)
    full = ds.reference_attention(q, k, v, ds.Full(), layout)
    assert torch.allclose(ds.reference_attention(q, k, v, pattern, layout), full, atol=1e-6)
    assert torch.allclose(ds.sparse_attention(q, k, v, pattern, layout), full, atol=1e-5)


def test_pool_larger_than_the_grid_is_clamped():
    layout = ds.TokenLayout(grid=(2, 5, 6))
    q, k, v = _inputs(layout)
    big = ds.Neighborhood((1, 3, 3), far=(9, 40, 40))
    exact = ds.Neighborhood((1, 3, 3), far=(2, 5, 6))
    assert torch.equal(ds.sparse_attention(q, k, v, big, layout), ds.sparse_attention(q, k, v, exact, layout))


def test_density_counts_each_pooled_key_once():
    layout = ds.TokenLayout(grid=(3, 7, 9), text_len=2)
    pattern = ds.Neighborhood((3, 3, 3), far=(1, 4, 4))
    s = layout.seq_len
    box_of, members = _boxes(layout, pattern.far.pool)
    exact = pattern.exact_part().mask(layout)
    v0 = layout.video_start
    pooled = 0
    for i in range(layout.video_len):
        qb = box_of[i]
        for kb, toks in members.items():
            if not any(bool(exact[v0 + a, v0 + j]) for a in members[qb] for j in toks):
                pooled += 1
    base = pattern.exact_part().density(layout, exact=True)
    assert pattern.density(layout, exact=True) == pytest.approx(base + pooled / s ** 2)
    assert pattern.density(layout) > pattern.exact_part().density(layout)


def test_serialisation_and_specs_round_trip(tmp_path):
    patterns = [ds.Neighborhood((3, 9, 9), far=(1, 8, 8)), ds.SlidingTile((4, 8, 8), (1, 3, 3), far=(2, 8, 8)),
                ds.Neighborhood((3, 9, 9), far=FarField((1, 4, 4))),
                ds.SlidingTile((1, 8, 8), (5, 1, 3), far=FarField((1, 8, 8), sinks=16))]
    for p in patterns:
        assert ds.Pattern.from_dict(p.to_dict()) == p
        assert ds.parse_pattern(p.spec) == p
        assert "far=" in p.spec
    assert ds.parse_pattern("sliding-tile:tile=4x8x8,window=1x3x3,far=1x8x8") == patterns[1].__class__(
        (4, 8, 8), (1, 3, 3), far=(1, 8, 8))
    assert ds.parse_pattern("neighborhood:kernel=3x9x9").far is None
    assert ds.parse_pattern("neighborhood:kernel=3x9x9,far=1x8x8,sinks=4").far == FarField((1, 8, 8), 4)
    assert patterns[3].to_dict()["far"] == {"pool": [1, 8, 8], "sinks": 16}
    assert patterns[0] != patterns[0].exact_part() and patterns[0].exact_part().far is None


@pytest.mark.parametrize("spec, message", [
    ("neighborhood:kernel=3x9x9,far=0x8x8", "far=0x8x8: every entry must be >= 1"),
    ("neighborhood:kernel=3x9x9,far=1x8", "far='1x8' has 2 entries"),
    ("full:far=1x8x8", "full takes no fields"),
    ("block-sparse:block=4x8x8,topk=0.2,far=1x8", "far='1x8' has 2 entries"),
    ("neighborhood:kernel=3x9x9,sinks=4", "sinks=4 needs far="),
    ("neighborhood:kernel=3x9x9,far=1x8x8,sinks=0", "sinks=0 must be >= 1"),
    ("neighborhood:kernel=3x9x9,far=1x8x8,sinks=x", "sinks='x' must be an int >= 1"),
])
def test_bad_far_fields_are_one_line_errors(spec, message):
    with pytest.raises(ValueError) as err:
        ds.parse_pattern(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_far_field_dicts():
    with pytest.raises(ValueError, match=r"unknown far-field fields \['levels'\]; allowed: \['pool', 'sinks'\]"):
        ds.Pattern.from_dict({"kind": "neighborhood", "kernel": [3, 3, 3], "far": {"pool": [1, 8, 8], "levels": 2}})
    with pytest.raises(ValueError, match="pool=.*every entry must be >= 1"):
        ds.Neighborhood((3, 3, 3), far=(1, -2, 8))
    with pytest.raises(TypeError, match="far='x' must be a FarField"):
        ds.Neighborhood((3, 3, 3), far="x")


@pytest.mark.skipif(not env.triton_interpret(), reason="needs TRITON_INTERPRET=1 before triton is imported")
def test_explicit_triton_backend_equals_reference():
    """backend='triton' runs far fields (tests/test_attention_triton_far.py has the cases)."""
    layout = ds.TokenLayout(grid=(2, 4, 4))
    q, k, v = _inputs(layout, batch=1)
    pattern = ds.Neighborhood((1, 3, 3), far=(1, 2, 2))
    out = ds.sparse_attention(q, k, v, pattern, layout, backend="triton")
    assert (out - ds.reference_attention(q, k, v, pattern, layout)).abs().max() <= TOL[torch.float32]


def test_memory_at_65k_tokens_stays_under_2_gb(tmp_path):
    """A far-field call at 65,536 tokens (16 x 64 x 64) in a fresh process: peak memory grows
    by far less than an S x S tensor would take (17 GB in fp32)."""
    import subprocess
    import sys

    code = """
import resource, torch, dit_sparse as ds
layout = ds.TokenLayout(grid=(16, 64, 64))
pattern = ds.SlidingTile((4, 8, 8), (1, 3, 3), far=(1, 8, 8))
q, k, v = (torch.randn(1, layout.seq_len, 1, 16) for _ in range(3))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    out = ds.sparse_attention(q, k, v, pattern, layout)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert torch.isfinite(out).all()
print((after - before) * 1024)
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    grown = int(proc.stdout.strip().splitlines()[-1])
    assert grown < 2 * 2 ** 30, f"peak memory grew by {grown / 2 ** 30:.2f} GiB"


def test_sinks_that_are_every_far_key_make_the_far_field_exact():
    """With as many sinks as video tokens, every far key is exact and no box is left to
    pool: the result is the exact pattern plus every far key, i.e. dense attention wherever
    boxes are far (a window of whole boxes makes near boxes exact too)."""
    layout = ds.TokenLayout(grid=(2, 8, 12), text_len=3)
    q, k, v = _inputs(layout)
    pattern = ds.SlidingTile((1, 4, 4), (1, 1, 1), far=ds.FarField((1, 4, 4), sinks=layout.video_len))
    full = ds.reference_attention(q, k, v, ds.Full(), layout)
    assert torch.allclose(ds.reference_attention(q, k, v, pattern, layout), full, atol=1e-6)
    assert torch.allclose(ds.sparse_attention(q, k, v, pattern, layout), full, atol=1e-5)


# --------------------------------------------------------------------------------------
# The CPU kernel's merge of extra keys (log-sum-exp of the exact part, then the extra keys)
# --------------------------------------------------------------------------------------


def _merge_case(dtype, blind_class: bool, empty_row: bool):
    """Random exact keys per row (a bool mask), extra keys with a per-class bias; the float64
    oracle is one softmax over the exact keys and the extra keys side by side."""
    g = torch.Generator().manual_seed(3)
    b, s, h, d, n_exact, e, c = 2, 11, 3, 8, 9, 5, 3
    q, k, v = (torch.randn(b, s, h, d, generator=g) for _ in range(3))
    ke, ve = (torch.randn(b, h, e, d, generator=g) for _ in range(2))
    keep = torch.rand(b, h, s, n_exact, generator=g) < 0.6
    bias = torch.randn(b, 1, c, e, generator=g).masked_fill(torch.rand(b, 1, c, e, generator=g) < 0.3, -math.inf)
    if blind_class:
        bias[:, :, 1] = -math.inf
    if empty_row:
        keep[0, :, 2] = False
    classes = torch.randint(0, c, (s - 2,), generator=g)
    classes[:2] = torch.tensor([1, 0]) if empty_row else classes[:2]  # row 2 sees nothing at all
    t0, t1 = 2, s  # rows 0-1 (say, text) see no extra keys
    scale = d ** -0.5
    # oracle
    kk = k[:, :n_exact].double().transpose(1, 2)
    vv = v[:, :n_exact].double().transpose(1, 2)
    qd = q.double().transpose(1, 2)  # [B, H, S, D]
    logits = (qd @ kk.transpose(-1, -2) * scale).masked_fill(~keep, -math.inf)
    row_bias = torch.full((b, 1, s, e), -math.inf, dtype=torch.float64)
    row_bias[:, :, t0:t1] = bias.double()[:, :, classes]
    extra_logits = qd @ ke.double().transpose(-1, -2) * scale + row_bias
    probs = torch.softmax(torch.cat([logits, extra_logits], -1), -1).nan_to_num(0.0)
    want = (probs[..., :n_exact] @ vv + probs[..., n_exact:] @ ve.double()).transpose(1, 2)
    # the kernel's inputs: exact outputs and log-sum-exps from the flash call
    from dit_sparse.kernels.cpu.attention import _sdpa_heads, merge_extra_keys

    qt = q.to(dtype)
    o, lse = _sdpa_heads(qt.transpose(1, 2), k[:, :n_exact].to(dtype).transpose(1, 2),
                         v[:, :n_exact].to(dtype).transpose(1, 2), keep, scale, may_have_empty_rows=True, with_lse=True)
    out, lse = o.transpose(1, 2).contiguous(), lse.transpose(1, 2).contiguous()
    extra = (ke.to(dtype), ve.to(dtype), bias, (t0, t1), classes)
    return out, lse, qt, extra, scale, want, merge_extra_keys


@pytest.mark.parametrize("chunk", [1 << 22, 7])  # one chunk, and chunks of a single row
@pytest.mark.parametrize("blind_class,empty_row", [(False, False), (True, False), (True, True)])
def test_merge_extra_keys_is_one_softmax_over_both_key_sets(chunk, blind_class, empty_row):
    out, lse, q, extra, scale, want, merge = _merge_case(torch.float32, blind_class, empty_row)
    merge(out, lse, q, extra, scale, chunk_elements=chunk)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, atol=2e-6, rtol=2e-5)
    if empty_row:
        assert bool((out[0, 2] == 0).all())  # no exact key and no extra key: 0, as the reference


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_merge_extra_keys_half_precision(dtype):
    out, lse, q, extra, scale, want, merge = _merge_case(dtype, True, False)
    merge(out, lse, q, extra, scale)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), want, atol=TOL[dtype], rtol=TOL[dtype])


def test_far_field_on_cpu_refuses_autograd():
    layout = ds.TokenLayout((2, 4, 4))
    q, k, v = (torch.randn(1, layout.seq_len, 2, 8, requires_grad=True) for _ in range(3))
    pattern = ds.Neighborhood((1, 3, 3), far=FarField((1, 2, 2)))
    with pytest.raises(NotImplementedError, match="inference-only"):
        ds.sparse_attention(q, k, v, pattern, layout, backend="cpu")
    with torch.no_grad():
        assert torch.isfinite(ds.sparse_attention(q, k, v, pattern, layout, backend="cpu")).all()


@pytest.mark.parametrize("n", [1, 3, 16, 31, 32, 40])
def test_select_sinks_matches_a_stable_sort_of_every_score(n):
    # the top-n shortcut must give exactly what sorting every key gives: highest score first,
    # ties to the lower token, masked keys last and invalid (rounded keys make many ties)
    from dit_sparse.farfield import select_sinks

    layout = ds.TokenLayout(grid=(2, 4, 4), text_len=3)
    v0, nv = layout.video_start, layout.video_len
    g = torch.Generator().manual_seed(n)
    for trial in range(12):
        q, k = torch.randn(2, 35, 3, 4, generator=g), torch.randn(2, 35, 3, 4, generator=g)
        if trial % 3 == 0:
            k = k.round()
        if trial % 4 == 1:
            k[:, 5:9] = k[:, 4:5]
        key_mask = torch.rand(2, 35, generator=g) > 0.7 if trial % 2 else None
        score = torch.einsum("bhd,bshd->bhs", q[:, v0:v0 + nv].mean(1), k[:, v0:v0 + nv])
        if key_mask is not None:
            score = score.masked_fill(~key_mask[:, None, v0:v0 + nv], float("-inf"))
        want = torch.sort(score, dim=-1, descending=True, stable=True)
        idx, valid = select_sinks(q, k, layout, n, key_mask)
        m = min(n, nv)
        assert torch.equal(idx, want.indices[..., :m])
        assert torch.equal(valid, want.values[..., :m] > float("-inf"))
