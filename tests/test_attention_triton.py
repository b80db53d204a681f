"""The Triton kernel through the Triton interpreter (TRITON_INTERPRET=1, set in conftest.py).

The interpreter multiplies raw bits in a bf16 ``tl.dot`` (triton-lang/triton#11584), so it is
tested here in fp32 and fp16; bf16 is covered by the ahead-of-time build (test_triton_aot.py).
"""

import pytest
import torch

import dit_sparse as ds
from dit_sparse import env
from attention_cases import ATOL, PATTERNS_SMALL, make_key_mask, make_qkv

pytestmark = pytest.mark.skipif(not env.triton_interpret(), reason="needs TRITON_INTERPRET=1 before triton is imported")

# Small on purpose: the interpreter runs every program in Python.
LAYOUTS = [
    ds.TokenLayout((3, 7, 11)),
    ds.TokenLayout((2, 5, 9), text_len=7, text_position="last"),
    ds.TokenLayout((2, 3, 5), text_len=9, text_position="first"),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"{l.grid}-text{l.text_len}{l.text_position}")
@pytest.mark.parametrize("pattern", PATTERNS_SMALL, ids=repr)
def test_triton_matches_reference_fp32(layout, pattern):
    q, k, v = make_qkv(layout, batch=2, heads=1, head_dim=64)
    km = make_key_mask(layout) if layout.text_len else None
    ref = ds.reference_attention(q, k, v, pattern, layout, key_mask=km)
    out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=km, backend="triton")
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out, ref, atol=ATOL[torch.float32], rtol=0)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("pattern", [ds.Neighborhood((3, 3, 5), dilation=(1, 2, 1)), ds.SlidingTile((1, 4, 4), 3),
                                     ds.BlockSparse((1, 4, 4), topk=0.4)], ids=repr)
def test_triton_fp16(head_dim, pattern):
    layout = ds.TokenLayout((2, 5, 7), text_len=5, text_position="first")
    q, k, v = make_qkv(layout, batch=2, heads=1, head_dim=head_dim, dtype=torch.float16)
    km = make_key_mask(layout)
    ref = ds.reference_attention(q, k, v, pattern, layout, key_mask=km)
    out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=km, backend="triton")
    torch.testing.assert_close(out.float(), ref.float(), atol=ATOL[torch.float16], rtol=0)


def test_triton_all_full_blocks_and_empty_rows():
    """A tile-aligned grid (only fully kept blocks) and rows whose keys are all masked."""
    layout = ds.TokenLayout((2, 8, 8), text_len=3)
    q, k, v = make_qkv(layout, batch=1, heads=2, head_dim=32)
    pattern = ds.SlidingTile((1, 8, 8), (1, 1, 1))
    km = torch.ones(1, layout.seq_len, dtype=torch.bool)
    km[0, 3 + 64:] = False  # the second frame's keys are gone: its rows see text only
    km[0, :3] = False       # and no text either: they are empty
    out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=km, backend="triton")
    ref = ds.reference_attention(q, k, v, pattern, layout, key_mask=km)
    assert torch.isfinite(out).all()
    assert (out[0, 3 + 64:] == 0).all()
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)


def test_triton_equals_cpu_backend():
    layout = ds.TokenLayout((4, 6, 7), text_len=4, text_position="last")
    q, k, v = make_qkv(layout, batch=1, heads=2, head_dim=32)
    p = ds.Neighborhood((3, 3, 3), stride=(1, 1, 2))
    torch.testing.assert_close(ds.sparse_attention(q, k, v, p, layout, backend="triton"),
                               ds.sparse_attention(q, k, v, p, layout, backend="cpu"), atol=2e-5, rtol=0)
