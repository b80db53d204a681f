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
    generic loop runs them, far slower than float32 and more so the larger the matrices
    (docs/benchmarks.md), so a diffusers pipeline loaded in that dtype crawls. Unknown
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


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times():
    """``(busy, total)`` jiffies summed over all CPUs from ``/proc/stat``, or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(x) for x in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user/nice
    return total - idle, total


def busy_cpus(interval: float = 0.25):
    """How many CPUs other processes keep busy, measured over ``interval`` seconds while
    this process sleeps (Linux ``/proc/stat``; elsewhere the 1-minute load average, which
    lags). None when neither is available."""
    import time

    first = _cpu_times()
    if first is None:
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return None
    time.sleep(interval)
    second = _cpu_times()
    busy, total = second[0] - first[0], second[1] - first[1]
    if total <= 0:
        return 0.0
    return busy / total * (os.cpu_count() or 1)


def available_memory():
    """Bytes of memory available to new allocations (``MemAvailable`` of ``/proc/meminfo``),
    or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
