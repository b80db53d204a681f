"""Bad input to the op: a ValueError or TypeError that names the argument and what is allowed."""

import pytest
import torch

import dit_sparse as ds
from dit_sparse import ops

LAY = ds.TokenLayout((2, 3, 4), text_len=2)
S = LAY.seq_len


def qkv(b=1, s=S, h=2, d=8, dtype=torch.float32):
    return [torch.randn(b, s, h, d, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("args, kwargs, exc, match", [
    (lambda: [torch.randn(S, 2, 8)] * 3, {}, ValueError, "4 dims"),
    (lambda: [torch.randn(1, S, 2, 8), torch.randn(1, S, 2, 8), torch.randn(1, S, 3, 8)], {}, ValueError, "shapes must match"),
    (lambda: [torch.randn(1, S, 2, 8), torch.randn(1, S, 2, 8, dtype=torch.float16), torch.randn(1, S, 2, 8)], {}, TypeError, "dtypes must match"),
    (lambda: qkv(s=S + 1), {}, ValueError, "does not match layout"),
    (lambda: [t.double() for t in qkv()], {}, TypeError, "not supported"),
    (lambda: qkv(d=320), {}, ValueError, "head_dim=320"),
    (lambda: qkv(), {"key_mask": torch.ones(1, S)}, TypeError, "key_mask"),
    (lambda: qkv(), {"key_mask": torch.ones(2, S, dtype=torch.bool)}, ValueError, "key_mask shape"),
    (lambda: qkv(), {"scale": -1.0}, ValueError, "scale=-1.0"),
    (lambda: qkv(), {"backend": "cuda"}, ValueError, "backend='cuda'"),
    (lambda: [t.tolist() for t in qkv()], {}, TypeError, "q must be a torch.Tensor"),
])
def test_op_errors(args, kwargs, exc, match):
    q, k, v = args()
    with pytest.raises(exc, match=match):
        ds.sparse_attention(q, k, v, ds.Neighborhood(3), LAY, **kwargs)


def test_bad_pattern_and_layout_types():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="pattern="):
        ds.sparse_attention(q, k, v, "neighborhood", LAY)
    with pytest.raises(TypeError, match="layout="):
        ds.sparse_attention(q, k, v, ds.Full(), (2, 3, 4))


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = qkv()
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ds.sparse_attention(q, k, v, ds.Neighborhood(3), LAY, backend="triton")
    assert not ds.can_run_triton(q)
    assert ds.choose_backend(q) == "cpu"


def test_no_silent_dense_fallback():
    """A sparse pattern really is sparse on every backend choice."""
    q, k, v = qkv()
    out = ds.sparse_attention(q, k, v, ds.Neighborhood((1, 1, 1)), LAY)
    dense = ds.sparse_attention(q, k, v, ds.Full(), LAY)
    assert (out - dense).abs().max() > 1e-3


def test_estimate_speedup_rejects_bad_blocks():
    with pytest.raises(ValueError, match="block_m=100"):
        ds.estimate_speedup(ds.Neighborhood(3), LAY, block=(100, 64))
    assert ops.MAX_HEAD_DIM == 256


def test_backend_table_order_and_names():
    assert ops.BACKENDS == tuple(entry.name for entry in ops.BACKEND_TABLE) == ("xformers", "triton", "cpu")
    q, _, _ = qkv()
    # on CPU tensors: xformers cannot run, Triton is never picked by itself, the SDPA path is
    assert ds.choose_backend(q, pattern=ds.Full()) == "cpu"


def test_a_requested_backend_that_cannot_run_says_why():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"backend='xformers' cannot run this call: it runs on CUDA tensors only"):
        ds.sparse_attention(q, k, v, ds.Full(), LAY, backend="xformers")
    with pytest.raises(ValueError, match=r"backend='gpu' is unknown; allowed: None \(by device\), 'xformers', "
                                         r"'triton', 'cpu'"):
        ds.sparse_attention(q, k, v, ds.Full(), LAY, backend="gpu")


def test_no_backend_lists_every_one_tried():
    q = torch.empty(1, LAY.seq_len, 2, 8, device="meta")
    with pytest.raises(ValueError) as err:
        ds.choose_backend(q, pattern=ds.Neighborhood(3))
    message = str(err.value)
    assert message.startswith("no backend can run this call; tried xformers: it runs on CUDA tensors only")
    assert "triton: only when asked for on meta tensors" in message
    assert "cpu: PyTorch's fused SDPA does not run on device meta" in message
