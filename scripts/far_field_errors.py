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
import argparse
from pathlib import Path

from dit_sparse.pipelines.profiling import measure
from dit_sparse.pipelines.tiny import embedded_model_path

ap = argparse.ArgumentParser(description="per-layer errors and plans with far-field candidates")
ap.add_argument("--model", default=str(embedded_model_path()), help="WanPipeline folder (default: the embedded model)")
ap.add_argument("--out-dir", type=Path, required=True, help="folder for the plans")
args = ap.parse_args()
args.out_dir.mkdir(parents=True, exist_ok=True)  # before the minutes of profiling
from diffusers import WanPipeline  # noqa: E402

pipe = WanPipeline.from_pretrained(args.model, local_files_only=True)
prompts = open('docs/plans/calib.txt').read().split('\n')[:2]
binary = ["neighborhood:kernel=5x9x9", "neighborhood:kernel=5x15x15", "neighborhood:kernel=3x15x15",
          "neighborhood:kernel=5x21x21", "sliding-tile:tile=1x4x4,window=5x5x5",
          "sliding-tile:tile=1x8x8,window=5x3x3", "sliding-tile:tile=1x8x8,window=5x1x3",
          "sliding-tile:tile=1x4x4,window=5x3x3", "sliding-tile:tile=1x32x32,window=1x1x1",
          "neighborhood:kernel=5x3x3", "neighborhood:kernel=5x1x1"]
far = [f"{c},far={p}" for c in binary if "1x32x32" not in c for p in ("1x8x8", "1x4x4")]
far += ["sliding-tile:tile=1x8x8,window=1x3x3,far=1x8x8", "sliding-tile:tile=1x8x8,window=1x3x3,far=1x4x4"]
m = measure(pipe, prompts, candidates=binary + far, num_inference_steps=20,
            sample_steps=[0, 2, 4, 6, 8, 10, 12, 14, 16, 18], height=128, width=128, num_frames=9, progress=False,
            call_kwargs=dict(guidance_scale=4.0), time_kernels=True,
            model_name="embedded:tiny-wan" if args.model == str(embedded_model_path()) else None)
t = m.table
err = t.errors.mean(0)  # [layers, heads, candidates], mean over the sampled steps
print("mean relative error per layer (heads averaged):", ", ".join(t.layers))
for c, cand in enumerate(t.candidates):
    print(f"  {cand.spec:80s} density {t.density[..., c].mean():.3f}  time {t.time[c]:.3f}  "
          + "  ".join(f"{err[l, :, c].mean():.3f}" for l in range(len(t.layers))))
for name, kw in [("far_e10", dict(max_error=0.1, max_dense_fraction=0.25, per_head=False, cost="time")),
                 ("far_e10p", dict(max_error=0.1, phases=[(10, 0.25)], max_dense_fraction=0.25, per_head=False,
                                   cost="time")),
                 ("far_e15p", dict(max_error=0.15, phases=[(10, 0.3)], max_dense_fraction=0.25, per_head=False,
                                   cost="time")),
                 ("far_b25", dict(budget=0.25, max_dense_fraction=0.2, per_head=False, cost="time"))]:
    p = m.plan(**kw)
    p.save(args.out_dir / f'plan128_{name}.json')
    print(name, p.summary())
