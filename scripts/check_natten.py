"""Cross-check dit-sparse's Neighborhood against NATTEN's ``na3d`` (the ground truth).

    pip install --no-build-isolation natten==0.21.7     # builds from source in minutes
    python scripts/check_natten.py [--cases 40]

Random grids, kernels, dilations and strides inside NATTEN's domain (kernel * dilation <=
axis); prints one row per case with the max-abs difference of dit-sparse's CPU kernel and of
its float64 reference against NATTEN's flex backend on CPU (fp32).
"""

import argparse
import random
import sys

import torch

import dit_sparse as ds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import natten
    except ImportError:
        print("natten is not installed: pip install --no-build-isolation natten==0.21.7", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    worst = 0.0
    print("| grid | kernel | dilation | stride | kernel vs natten | reference vs natten |")
    print("|---|---|---|---|---|---|")
    for _ in range(args.cases):
        grid, kernel, dilation, stride = [], [], [], []
        for _axis in range(3):
            n = rng.randint(4, 12)
            d = rng.choice([1, 1, 2]) if n >= 4 else 1
            k = rng.randint(2, max(2, n // d))  # NATTEN needs kernel >= 2
            s = rng.randint(1, k)
            grid.append(n), kernel.append(k), dilation.append(d), stride.append(s)
        q, k_, v = (torch.randn(1, *grid, 2, 16) for _ in range(3))
        ref_natten = natten.na3d(q, k_, v, kernel_size=tuple(kernel), dilation=tuple(dilation), stride=tuple(stride),
                                 backend="flex-fna")
        lay = ds.TokenLayout(tuple(grid))
        p = ds.Neighborhood(tuple(kernel), dilation=tuple(dilation), stride=tuple(stride))
        flat = [t.flatten(1, 3) for t in (q, k_, v)]
        ours = ds.sparse_attention(*flat, p, lay).view_as(ref_natten)
        ref = ds.reference_attention(*flat, p, lay).view_as(ref_natten)
        e1, e2 = (ours - ref_natten).abs().max().item(), (ref - ref_natten).abs().max().item()
        worst = max(worst, e1, e2)
        print(f"| {tuple(grid)} | {tuple(kernel)} | {tuple(dilation)} | {tuple(stride)} | {e1:.1e} | {e2:.1e} |")
    print(f"worst difference: {worst:.2e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
