"""The CPU kernels' groups on single-threaded workers: same numbers, no leaked thread settings."""

import threading

import pytest
import torch

import dit_sparse as ds
from dit_sparse import env
from dit_sparse.kernels.cpu import parallel

PATTERNS = [ds.Neighborhood((3, 5, 5)), ds.SlidingTile((2, 4, 4), (1, 3, 1)), ds.BlockSparse((2, 4, 4), topk=0.3)]
LAYOUTS = [ds.TokenLayout((4, 9, 12), text_len=3, text_position="first"),  # ragged blocks: packed path
           ds.TokenLayout((4, 8, 12))]  # whole blocks


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"{l.grid}-text{l.text_len}")
@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
def test_workers_give_the_serial_result(pattern, layout, two_threads, monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, layout.seq_len, 3, 32, generator=g) for _ in range(3))
    assert parallel.workers(env.cpu_group_threads()) == 2
    threaded = ds.sparse_attention(q, k, v, pattern, layout, backend="cpu")
    monkeypatch.setenv("DIT_SPARSE_CPU_GROUP_THREADS", "0")
    assert parallel.workers(env.cpu_group_threads()) == 1
    serial = ds.sparse_attention(q, k, v, pattern, layout, backend="cpu")
    torch.testing.assert_close(threaded, serial, atol=1e-6, rtol=0)
    torch.testing.assert_close(threaded, ds.reference_attention(q, k, v, pattern, layout), atol=1e-5, rtol=0)


@pytest.mark.parametrize("value", ["1", "0", "", "false", "False", "yes"])
def test_the_knob_reaches_the_kernels_from_the_core(value, two_threads, monkeypatch):
    """The kernels read no environment: ``sparse_attention`` passes them
    ``env.cpu_group_threads()`` (DIT_SPARSE_CPU_GROUP_THREADS), on both CPU paths."""
    monkeypatch.setenv("DIT_SPARSE_CPU_GROUP_THREADS", value)
    seen = []
    real = parallel.workers
    monkeypatch.setattr(parallel, "workers", lambda group_threads=True: seen.append(group_threads) or real(
        group_threads))
    layout = ds.TokenLayout((4, 8, 8))
    q = torch.randn(1, layout.seq_len, 2, 16)
    for pattern in (ds.Neighborhood((3, 3, 3)), ds.BlockSparse((2, 4, 4), topk=0.5)):
        ds.sparse_attention(q, q, q, pattern, layout, backend="cpu")
    assert seen == [env.cpu_group_threads()] * 2
    assert real() == 2 and real(True) == 2 and real(False) == 1  # the kernel's own default splits


def test_thread_settings_do_not_leak(two_threads):
    layout = ds.TokenLayout((4, 8, 8))
    q = torch.randn(1, layout.seq_len, 2, 16)
    ds.sparse_attention(q, q, q, ds.Neighborhood((3, 3, 3)), layout, backend="cpu")
    assert torch.get_num_threads() == 2
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # a new thread's default
    t.start()
    t.join()
    assert seen == [2]


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "grad"])
def test_caller_grad_mode_reaches_the_workers(mode, two_threads):
    """Grad and inference mode are thread-local: the workers must run under the caller's."""
    layout = ds.TokenLayout((4, 8, 8))
    q = torch.randn(1, layout.seq_len, 2, 16, requires_grad=mode == "grad")
    ctx = {"inference_mode": torch.inference_mode(), "no_grad": torch.no_grad()}.get(mode)
    if ctx is None:
        out = ds.sparse_attention(q, q, q, ds.Neighborhood((3, 3, 3)), layout, backend="cpu")
        out.sum().backward()
        assert q.grad is not None and torch.isfinite(q.grad).all()
        return
    with ctx:
        out = ds.sparse_attention(q, q, q, ds.Neighborhood((3, 3, 3)), layout, backend="cpu")
    assert not out.requires_grad
    assert out.is_inference() == (mode == "inference_mode")
