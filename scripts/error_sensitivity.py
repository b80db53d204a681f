"""How much attention error does a model tolerate? End-to-end PSNR against the size of the error.

Generates dense once, then once per ``alpha`` with every sparsified self-attention call
returning ``full + alpha * (sparse - full)``: the plan's (or pattern's) own error direction,
scaled. ``alpha = 1`` is the plan as it runs; ``alpha = 0.1`` is an imagined pattern ten times
as accurate. Prints, per alpha, the measured relative error of each sparsified layer
(``||out - full|| / ||full||`` over its calls in the sparse steps), the clip PSNR / SSIM
against dense (``eval_plan.quality``: the MSE over every pixel of every frame of a clip, as
``dit-sparse bench``), averaged over the prompts and seeds, and a least-squares line
``PSNR = a - b * log10(error)`` through the points, with the mean layer error that the line
gives for ``--target`` dB.

The line tells whether a quality target is a matter of a better pattern (and how much better)
or out of reach: on the previous embedded tiny Wan at 9x128x128 the budget-0.25 plan's layers
erred by 0.17-0.37 and PSNR (then the mean of per-frame PSNRs) fell about 17 dB per decade of
error, so 28 dB needed about a fifth of it (docs/benchmarks.md).

    python scripts/error_sensitivity.py --plan docs/plans/plan128_b25.json --height 128 --width 128
    python scripts/error_sensitivity.py --pattern sliding-tile:tile=1x8x8,window=5x1x3 --alphas 1 0.3 0.1
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import dit_sparse as ds
from dit_sparse.report import format_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_plan import generate, load, quality, video_size  # noqa: E402

PROMPTS = ["a red circle moving left on a blue background", "a yellow triangle moving up on a black background"]


class ScaledError:
    """An observer (:func:`dit_sparse.observe`) whose sparse calls return
    ``full + alpha * (sparse - full)``, recording each layer's relative error."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.sums: Dict[str, List[float]] = defaultdict(lambda: [0.0, 0.0])  # layer -> [err^2, full^2]

    def __call__(self, call, proceed):
        if not call.sparse:
            return proceed()
        sparse = call.run()
        full = call.run(patterns=ds.Full())
        out = full + self.alpha * (sparse - full)
        sums = self.sums[call.layer]
        sums[0] += float((out - full).double().pow(2).sum())
        sums[1] += float(full.double().pow(2).sum())
        return out

    def errors(self) -> Dict[str, float]:
        return {name: math.sqrt(e / f) if f > 0 else 0.0 for name, (e, f) in self.sums.items()}


def fit_line(points: Sequence[Tuple[float, float]]) -> Tuple[float, float]:
    """``(a, b)`` of ``psnr = a - b * log10(error)`` by least squares over ``(error, psnr)``."""
    xs = [math.log10(e) for e, _ in points]
    ys = [p for _, p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("need points at two or more error sizes to fit a line")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - slope * mx, -slope


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded tiny Wan)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--plan", help="a plan JSON from `dit-sparse profile`")
    what.add_argument("--pattern", help="one pattern for every self-attention layer")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.3, 0.1, 0.03],
                        help="error scales (1 = the plan as it is)")
    parser.add_argument("--dense-steps", type=int, default=3)
    parser.add_argument("--target", type=float, default=28.0, help="PSNR (dB) to solve the fitted line for")
    parser.add_argument("--prompts", nargs="+", default=PROMPTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    args = parser.parse_args(argv)
    for alpha in args.alphas:
        if not 0.0 <= alpha <= 1.0:
            parser.error(f"--alphas: {alpha} is not in [0, 1]")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    pipe, defaults, name = load(args.model)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    size = video_size(args, defaults)
    call = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale, **size)
    spec = ds.Plan.load(args.plan) if args.plan else ds.parse_pattern(args.pattern)

    dense, _ = generate(pipe, args.prompts, args.seeds, call)
    rows = []
    for alpha in args.alphas:
        fn = ScaledError(alpha)
        with ds.applied(pipe, spec, dense_steps=args.dense_steps), ds.observe(pipe, fn):
            frames, _ = generate(pipe, args.prompts, args.seeds, call)
        rows.append((alpha, fn.errors(), *quality(frames, dense)))

    layers = sorted(rows[0][1])
    print(f"model {name}; {args.plan or args.pattern}; {len(args.prompts)} prompt(s) x {len(args.seeds)} seed(s), "
          f"{args.steps} steps ({args.dense_steps} dense), size {size}")
    header = ["alpha"] + [f"err:{n}" for n in layers] + ["mean_err", "psnr_db", "ssim"]
    table = [header]
    points = []
    for alpha, errors, p, s in rows:
        mean = sum(errors.values()) / max(len(errors), 1)
        table.append([f"{alpha:g}"] + [f"{errors[n]:.4f}" for n in layers]
                     + [f"{mean:.4f}", "inf" if math.isinf(p) else f"{p:.2f}", f"{s:.4f}"])
        if mean > 0 and math.isfinite(p):
            points.append((mean, p))
    print(format_table(table, left=0))
    if len({round(e, 12) for e, _ in points}) >= 2:
        a, b = fit_line(points)
        need = 10 ** ((a - args.target) / b) if b > 0 else float("nan")
        largest = max(points)[0]
        print(f"\nfit: PSNR = {a:.2f} - {b:.2f} * log10(mean error); {args.target:g} dB at mean layer error "
              f"{need:.4f} ({need / largest:.3f} x the largest measured, {largest:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
