"""Per-layer errors of far-field candidates, and plans selected with them: the measurement of
docs/plans/make_plans.py (the embedded model at 9 x 128 x 128 on docs/plans/calib.txt, the
same binary candidates) with every candidate but the whole-frame tile also offered with a far
field of 1 x 8 x 8 and of 1 x 4 x 4 token boxes (``ds.FarField``), then selections from all of
them, binary and far (docs/benchmarks.md has the table and what the plans did end to end):

    python scripts/far_field_errors.py --out-dir /tmp/far-plans     # ~10 min on 2 cores

``far_e10`` (every layer's error <= 0.1, ranked by kernel time), ``far_e10p`` (the same with a
second phase from step 10 at 0.25), ``far_e15p`` (0.15, then 0.3) and ``far_b25`` (mean kernel
time <= 0.25 of dense). Unlike make_plans.py's, these plans are run with their own recorded
dense warm-up steps. The per-layer error table (binary and far candidates, with kernel times
measured here) is printed, as in make_plans.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "plans"))
from make_plans import CANDIDATES, measure_at_128  # noqa: E402

binary = CANDIDATES
far = [f"{c},far={p}" for c in binary if "1x32x32" not in c for p in ("1x8x8", "1x4x4")]
far += ["sliding-tile:tile=1x8x8,window=1x3x3,far=1x8x8", "sliding-tile:tile=1x8x8,window=1x3x3,far=1x4x4"]
args, m = measure_at_128("per-layer errors and plans with far-field candidates", binary + far, out_dir_required=True)

for name, kw in [("far_e10", dict(max_error=0.1, max_dense_fraction=0.25, per_head=False, cost="time")),
                 ("far_e10p", dict(max_error=0.1, phases=[(10, 0.25)], max_dense_fraction=0.25, per_head=False,
                                   cost="time")),
                 ("far_e15p", dict(max_error=0.15, phases=[(10, 0.3)], max_dense_fraction=0.25, per_head=False,
                                   cost="time")),
                 ("far_b25", dict(budget=0.25, max_dense_fraction=0.2, per_head=False, cost="time"))]:
    p = m.plan(**kw)
    p.save(args.out_dir / f'plan128_{name}.json')
    print(name, p.summary())
