"""Run many small attention calls side by side, one thread each.

PyTorch's CPU flash-attention kernel splits a call over (batch, head, query chunk), and its
query chunks are short when a call has few query rows (32 rows below 192, 64 below 768):
each chunk then re-reads all of its head's keys, and two threads on one such call are
memory-bound: such calls run faster as streams of single-threaded calls side by side than
one after another on all threads (docs/benchmarks.md). So the CPU kernels hand their groups
to a small pool of workers, one per intra-op thread, each running PyTorch single-threaded
(``torch.set_num_threads(1)`` on a worker sets only that thread's OpenMP team size), pulling
groups in order.

This is inter-op parallelism of the kind ``torch.jit.fork`` offers, done with a thread
pool because the groups are plain Python closures; torch releases the GIL inside its ops.

Whether to split at all is the caller's setting (``group_threads``; the library's knob is
``DIT_SPARSE_CPU_GROUP_THREADS``, read in ``dit_sparse/env.py``): a kernel imports nothing
above the kernels.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


@functools.lru_cache(maxsize=None)
def _openmp() -> bool:
    return "OpenMP" in torch.__config__.parallel_info()


def _init_worker() -> None:
    torch.get_num_threads()  # settle this thread's lazy thread-count init first ...
    torch.set_num_threads(1)  # ... then make its own OpenMP team one thread


def workers(group_threads: bool = True) -> int:
    """How many groups run at once: the intra-op thread count, where it is safe to split and
    ``group_threads`` allows it."""
    n = torch.get_num_threads()
    return n if n > 1 and _openmp() and group_threads else 1


def run(tasks: Sequence[Callable[[], None]], *inputs: torch.Tensor, group_threads: bool = True) -> None:
    """Run ``tasks`` (closures that write disjoint parts of one output) to completion, side
    by side on :func:`workers` single-threaded workers, or in order on the calling thread:
    always so when autograd records ``inputs`` (in-place writes into one buffer from several
    threads would race in its graph bookkeeping) or when ``group_threads`` is False."""
    n = workers(group_threads)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        n = 1
    if n <= 1 or len(tasks) < 2:
        for t in tasks:
            t()
        return
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(n, thread_name_prefix="dit-sparse-cpu", initializer=_init_worker)
            _pool_size = n
        pool = _pool
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    it = iter(tasks)
    it_lock = threading.Lock()

    def drain() -> None:
        # grad and inference mode are thread-local: run under the caller's
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            while True:
                with it_lock:
                    t = next(it, None)
                if t is None:
                    return
                t()

    try:
        for f in [pool.submit(drain) for _ in range(n)]:
            f.result()
    finally:
        # a worker's set_num_threads(1) also rewrote the process-wide default that new
        # threads start from: put it back
        torch.set_num_threads(n)
