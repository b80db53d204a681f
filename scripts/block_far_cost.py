"""CPU kernel time of far fields against their base patterns at 16 x 32 x 32 tokens, 12 heads,
fp32: block-sparse (one pooled key per dropped 4x8x8 block) and the window patterns (1x8x8
pooled boxes), every configuration timed round-robin, fastest of ``--reps`` calls:

    python scripts/block_far_cost.py [--reps 5] [--head-dims 64 128]
"""
import argparse
import time

import torch

import dit_sparse as ds

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--reps", type=int, default=5)
ap.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
args = ap.parse_args()

BASES = {  # base pattern -> its far field
    "block-sparse:block=4x8x8,topk=0.1": "far=4x8x8",
    "block-sparse:block=4x8x8,topk=0.25": "far=4x8x8",
    "sliding-tile:tile=4x8x8,window=2x1x3": "far=4x8x8",
    "sliding-tile:tile=4x8x8,window=2x3x3": "far=4x8x8",
    "neighborhood:kernel=7x9x9": "far=4x8x8",
    "neighborhood:kernel=9x15x15": "far=4x8x8",
    "sliding-tile:tile=4x8x8,window=2x1x3 ": "far=1x8x8",  # 4x more boxes (the space after
    "neighborhood:kernel=7x9x9 ": "far=1x8x8",              # the base keeps the keys apart)
}
torch.manual_seed(0)
layout = ds.TokenLayout(grid=(16, 32, 32), text_len=0)
print(f"{'hd':>3s}  {'pattern + far field':52s} {'base_ms':>8s} {'far_ms':>8s} {'cost':>6s} {'ideal':>6s}")
for hd in args.head_dims:
    q, k, v = (torch.randn(1, layout.seq_len, 12, hd) for _ in range(3))
    specs = list(dict.fromkeys(s for base, far in BASES.items() for s in (base.strip(), f"{base.strip()},{far}")))
    patterns = {s: ds.parse_pattern(s) for s in specs}
    best = dict.fromkeys(specs, float("inf"))
    for p in patterns.values():
        ds.sparse_attention(q, k, v, p, layout, backend="cpu")  # warm-up: tables, caches
    for _ in range(args.reps):
        for s, p in patterns.items():
            t = time.perf_counter()
            ds.sparse_attention(q, k, v, p, layout, backend="cpu")
            best[s] = min(best[s], time.perf_counter() - t)
    for base, far in BASES.items():
        base = base.strip()
        b, f = best[base] * 1e3, best[f"{base},{far}"] * 1e3
        # ideal: the extra query-key pairs (a pooled key counts as one) over the base's pairs;
        # for block-sparse patterns, density estimated from topk
        ideal = patterns[f"{base},{far}"].density(layout) / patterns[base].density(layout) - 1
        print(f"{hd:3d}  {base + ' + ' + far:52s} {b:8.0f} {f:8.0f} {f / b - 1:+6.0%} {ideal:+6.0%}", flush=True)
