"""Compile every shipped Triton tile config ahead of time for sm_80 and sm_90a (no GPU needed)
and report registers, spills and shared memory (from Triton's bundled ``ptxas-blackwell -v``).
Each config is built six times: the plain kernel, once with window masks (``mask`` column
``window``: neighborhoods and sliding tiles) and once with a block selection (``block``:
block-sparse patterns, key-block lists per (batch, head); its own config where
``BLOCK_CONFIGS`` has one); with the far-field loop compiled in
(``far`` column; its own config where ``FAR_CONFIGS`` has one); with the far-field and sink
loops (``sinks`` column; its own config where ``SINK_CONFIGS`` has one); both of the far-field
builds with window masks and with a block selection (its own config where
``BLOCK_FAR_CONFIGS`` has one).

    python scripts/triton_aot_report.py [--json out.json] [--jobs 2]

Must run without ``TRITON_INTERPRET`` (an interpreted kernel cannot be compiled).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import subprocess
import sys
import tempfile

ARCHS = (80, 90)
# (mask mode: 0 windows, 1 block selection; far-field loop; sink loop) compiled in
VARIANTS = ((0, False, False), (0, True, False), (0, True, True), (1, False, False), (1, True, False), (1, True, True))
MASK_NAMES = {0: "window", 1: "block"}


def compile_one(job):
    dtype, head_dim, arch, mask_mode, far, sinks = job
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton

    from dit_sparse.kernels.triton_attn.configs import get_config
    from dit_sparse.kernels.triton_attn.launcher import aot_compile, block_shape

    cfg = get_config(dtype, head_dim, far, sinks, block=mask_mode == 1)
    kernel = aot_compile(dtype, head_dim, arch, mask_mode=mask_mode, far=far, sinks=sinks)
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        res = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", ptx, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    text = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {
        "dtype": dtype, "head_dim": head_dim, "arch": gpu, "mask": MASK_NAMES[mask_mode], "far": far, "sinks": sinks,
        "block_m": cfg.block_m, "block_n": cfg.block_n, "q_block": block_shape(cfg.block_m),
        "kv_block": block_shape(cfg.block_n), "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
        "cubin_bytes": len(kernel.asm["cubin"]), "shared_bytes": kernel.metadata.shared,
        "registers": int(regs.group(1)) if regs else None,
        "spill_stores": int(spill.group(1)) if spill else None,
        "spill_loads": int(spill.group(2)) if spill else None,
        "ptxas_ok": res.returncode == 0,
    }


def main(argv=None):
    from dit_sparse.atomic import write_text
    from dit_sparse.kernels.triton_attn.configs import CONFIGS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    jobs = [(dtype, hd, arch, *variant) for (dtype, hd) in CONFIGS for arch in ARCHS for variant in VARIANTS]
    with cf.ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(compile_one, jobs))
    header = f"{'dtype':9} {'hd':>4} {'arch':7} {'mask':6} {'far':>3} {'sinks':>5} {'BM':>4} {'BN':>4} {'q_block':>11} {'kv_block':>11} {'warps':>5} {'stages':>6} {'regs':>5} {'spill st/ld':>11} {'smem':>7}"
    print(header)
    for r in rows:
        print(f"{r['dtype']:9} {r['head_dim']:>4} {r['arch']:7} {r['mask']:6} {'yes' if r['far'] else 'no':>3} "
              f"{'yes' if r['sinks'] else 'no':>5} {r['block_m']:>4} {r['block_n']:>4} "
              f"{'x'.join(map(str, r['q_block'])):>11} {'x'.join(map(str, r['kv_block'])):>11} {r['num_warps']:>5} "
              f"{r['num_stages']:>6} {r['registers']!s:>5} {str(r['spill_stores']) + '/' + str(r['spill_loads']):>11} "
              f"{r['shared_bytes']:>7}")
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1), what="--json")
    return 0 if all(r["ptxas_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
