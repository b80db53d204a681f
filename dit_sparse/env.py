"""Every environment knob the library reads, and what it asks of the machine, in one place."""

import functools
import os


def triton_interpret() -> bool:
    """``TRITON_INTERPRET=1``: Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def cpu_group_threads() -> bool:
    """``DIT_SPARSE_CPU_GROUP_THREADS=0`` turns off running CPU attention groups side by side
    on single-threaded workers (they then run one after another, each on every thread)."""
    return os.environ.get("DIT_SPARSE_CPU_GROUP_THREADS", "1") not in ("", "0", "false", "False")


@functools.lru_cache(maxsize=None)
def cpu_half_matmul_is_native(dtype_name: str) -> bool:
    """Whether this CPU multiplies ``"bfloat16"`` / ``"float16"`` matrices in hardware.

    PyTorch hands half-precision CPU matmuls to oneDNN only where the CPU has the
    instructions (AVX512-BF16 or AMX for bf16, AVX512-FP16 or AMX-FP16 for fp16); elsewhere a
    generic loop runs them, on a 2-core AVX2 AMD EPYC 30x (256 x 256) to 300x (2048 x 2048)
    slower than float32, so a diffusers pipeline loaded in that dtype crawls. Unknown
    (a PyTorch without the probe): assumed native, so nothing warns wrongly.
    """
    import torch

    probe = {"bfloat16": "_is_mkldnn_bf16_supported", "float16": "_is_mkldnn_fp16_supported"}.get(dtype_name)
    if probe is None:
        return True
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):
        return True
