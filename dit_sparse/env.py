"""Every environment knob the library reads, in one place."""

import os


def triton_interpret() -> bool:
    """``TRITON_INTERPRET=1``: Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def cpu_group_threads() -> bool:
    """``DIT_SPARSE_CPU_GROUP_THREADS=0`` turns off running CPU attention groups side by side
    on single-threaded workers (they then run one after another, each on every thread)."""
    return os.environ.get("DIT_SPARSE_CPU_GROUP_THREADS", "1") not in ("", "0", "false", "False")
