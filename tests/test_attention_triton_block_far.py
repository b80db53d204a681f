"""Far fields of block-sparse patterns in the Triton kernel, through the Triton interpreter
(TRITON_INTERPRET=1, set in conftest.py), against the float64 definition
``ds.reference_attention`` and against the CPU kernel.

``BlockSparse(..., far=FarField(pool, sinks))``: per (batch, head, query block) a pool box is
near when it overlaps one of the block's selected key blocks; every video query sees one
pooled key (``log(count)`` bias) per other box, and each sink whose box is not near its block.
The kernel's query blocks may span several pattern blocks (``block=(1, 4, 4)``: fp32 / head_dim
64 query tiles of 2x8x4, the checked pair list) or lie inside one (``block=(2, 8, 8)``: 1x8x8
tiles, every box seen by all rows). fp32 and fp16 only: the interpreter multiplies raw bits in a bf16
``tl.dot`` (triton-lang/triton#11584); bf16 is covered by the ahead-of-time build.
"""

import pytest
import torch

import dit_sparse as ds
from dit_sparse import env, ops
from dit_sparse.blockmask import block_sparse_far_blocks
from dit_sparse.farfield import block_far_tables
from dit_sparse.tiling import BlockGrid, block_sparse_select
from attention_cases import ATOL, case_id, case_layout, check_triton, make_key_mask, make_qkv

needs_interpreter = pytest.mark.skipif(not env.triton_interpret(),
                                       reason="needs TRITON_INTERPRET=1 before triton is imported")

# Ragged grids (neither blocks nor pool boxes divide them); text first, last and none; topk
# and threshold; pool equal to, finer and coarser than the block; sinks, once more (70) than
# a key block holds (32 or 64), so the sink loop takes several steps.
CASES = [
    ((3, 7, 9), 4, "first", ds.BlockSparse(block=(1, 4, 4), topk=0.3, far=ds.FarField((1, 4, 4)))),
    ((2, 9, 12), 5, "last", ds.BlockSparse(block=(2, 8, 8), topk=0.25, far=ds.FarField((1, 4, 4)))),
    ((4, 6, 7), 0, "first", ds.BlockSparse(block=(2, 4, 4), threshold=0.6, far=ds.FarField((1, 2, 2), sinks=3))),
    ((3, 7, 9), 3, "last", ds.BlockSparse(block=(1, 4, 4), topk=0.3, far=ds.FarField((1, 4, 4), sinks=70))),
    ((2, 6, 10), 2, "first", ds.BlockSparse(block=(1, 2, 2), topk=0.2, far=ds.FarField((2, 4, 4), sinks=2))),
]


def _check(pattern, layout, q, k, v, key_mask=None):
    return check_triton(pattern, layout, q, k, v, key_mask, against_cpu=True)


@needs_interpreter
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "key-mask"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_block_far_fp32(case, masked):
    layout, pattern = case_layout(case), case[3]
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=64)
    _check(pattern, layout, q, k, v, make_key_mask(layout) if masked else None)


@needs_interpreter
@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=case_id)
def test_block_far_fp16(case):
    layout, pattern = case_layout(case), case[3]
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=64, dtype=torch.float16)
    _check(pattern, layout, q, k, v, make_key_mask(layout))


@needs_interpreter
def test_far_field_changes_the_output():
    """The pooled keys matter: the result differs from the pattern without its far field by
    far more than the tolerance (so a kernel that skipped the far loop would fail above)."""
    case = CASES[0]
    layout, pattern = case_layout(case), case[3]
    q, k, v = make_qkv(layout, batch=2, heads=2, head_dim=32)
    out = _check(pattern, layout, q, k, v)
    exact = ds.reference_attention(q, k, v, pattern.exact_part(), layout)
    assert (out - exact).abs().max() > 100 * ATOL[torch.float32]


def test_triton_runs_block_sparse_far_fields(monkeypatch):
    monkeypatch.setattr(env, "triton_interpret", lambda: True)
    q = torch.zeros(1, 16, 1, 8)
    for pattern in (ds.BlockSparse(block=(1, 2, 2), topk=0.5, far=(1, 2, 2)),
                    ds.BlockSparse(block=(1, 2, 2), topk=0.5, far=ds.FarField((1, 4, 4), sinks=2))):
        assert ops._why_not_triton(q, pattern) is None


@pytest.mark.parametrize("q_block", [(1, 2, 4), (2, 4, 4), (1, 8, 8)])
def test_far_lists_match_the_per_row_definition(q_block):
    """Per (batch * head, kernel block) the listed boxes, expanded to rows as the kernel does
    (full list: every row; pairs: rows of the pair's pattern block), are exactly the boxes
    that are not near each row's pattern block, from the selection and the overlap of blocks
    and boxes computed here by brute force."""
    grid, text = (3, 6, 10), 3
    layout = ds.TokenLayout(grid, text_len=text)
    pattern = ds.BlockSparse(block=(1, 4, 4), topk=0.3, far=ds.FarField((1, 2, 3)))
    q, k, _ = make_qkv(layout, batch=2, heads=2, head_dim=16)
    pgrid = BlockGrid(grid, pattern.block)
    sel = block_sparse_select(pattern, layout, pgrid, q, k).reshape(4, pgrid.num_blocks, -1)
    far, near = block_sparse_far_blocks(pattern, layout, sel, q_block)
    boxes = BlockGrid(grid, (1, 2, 3))
    tok_block, tok_box, tok_q = pgrid.token_block(), boxes.token_block(), BlockGrid(grid, q_block).token_block()
    n_q = BlockGrid(grid, q_block).num_blocks + 1  # one text block of 3 tokens
    assert far.full_far_num_boxes.shape == (4, n_q) and far.far_num_boxes.shape == (4, n_q)
    assert int(far.full_far_num_boxes[:, -1].sum() + far.far_num_boxes[:, -1].sum()) == 0  # text rows
    for z in range(4):
        for t in range(tok_block.numel()):  # every video token, by brute force
            p, i = int(tok_block[t]), int(tok_q[t])
            selected_tokens = sel[z, p][tok_block]  # tokens of the selected key blocks
            want = set(range(boxes.num_blocks)) - set(tok_box[selected_tokens].tolist())
            got = set(far.full_far_indices[z, i, :far.full_far_num_boxes[z, i]].tolist())
            n = int(far.far_num_boxes[z, i])
            got |= {int(f) for f, qb in zip(far.far_indices[z, i, :n], far.far_query_boxes[z, i, :n]) if int(qb) == p}
            assert got == want, (z, t)
            assert set((~near[z, p]).nonzero().flatten().tolist()) == want


def test_launcher_asks_for_the_sink_near_table():
    from dit_sparse.kernels.triton_attn.launcher import launch

    q = torch.zeros(1, 4, 1, 8)
    lut = torch.zeros(1, 1, dtype=torch.int32)
    far_lut = (lut, lut[..., None], lut, lut[..., None], lut[..., None])
    with pytest.raises(ValueError, match="sink_near"):
        launch(q, q, q, None, lut, lut[..., None], lut, lut[..., None], None, torch.zeros(1, 1, 1, dtype=torch.int8),
               grid=(1, 2, 2), text_len=0, text_start=0, video_start=0, num_video_q_blocks=1, num_q_blocks=1,
               q_block=(1, 2, 2), kv_block=(1, 2, 2), far_keys=(q, q, torch.zeros(1, 1, 1)), far_lut=far_lut,
               sinks=torch.zeros(1, 1, 1, dtype=torch.int64), scale=1.0)
    assert block_far_tables(ds.TokenLayout((1, 2, 2)), (1, 2, 2), (1, 2, 2)).num_boxes == 1
