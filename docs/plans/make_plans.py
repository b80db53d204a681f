"""The plans of the README's end-to-end table: one dense profiling pass of the embedded model at
9 x 128 x 128 on docs/plans/calib.txt, then three selections from the same measurement.

    python docs/plans/make_plans.py      # ~2 min on 2 cores
"""
import dit_sparse as ds
from dit_sparse.pipelines.profiling import measure
from dit_sparse.pipelines.tiny import load_embedded_pipeline
pipe = load_embedded_pipeline()
prompts = open('docs/plans/calib.txt').read().split('\n')[:2]
cands = ["neighborhood:kernel=3x9x9", "neighborhood:kernel=5x11x11", "neighborhood:kernel=5x15x15", "neighborhood:kernel=3x15x15",
         "sliding-tile:tile=1x8x8,window=5x3x3", "sliding-tile:tile=1x8x8,window=5x1x3"]
m = measure(pipe, prompts, candidates=cands, num_inference_steps=20, sample_steps=[0,2,4,6,8,10,12,14,16,18],
              height=128, width=128, num_frames=9, progress=False, call_kwargs=dict(guidance_scale=4.0))
for name, kw in [("b35", dict(budget=0.35, max_dense_fraction=0.2)), ("b25", dict(budget=0.25, max_dense_fraction=0.2)),
                 ("e10", dict(max_error=0.1, max_dense_fraction=0.25))]:
    for per_head in (False,):
        p = m.plan(per_head=per_head, **kw)
        p.save(f'docs/plans/plan128_{name}.json')
        print(name, p.summary())
