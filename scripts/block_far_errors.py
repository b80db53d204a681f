"""Per-layer errors of block-sparse candidates with and without a far field, on the embedded
model at 9 x 128 x 128 (20 steps, guidance 4, 10 sampled steps) and the two calibration
prompts of docs/plans/make_plans.py; kernel times are measured during the profile
(docs/benchmarks.md, "Block-sparse far fields", has the table):

    python scripts/block_far_errors.py          # ~5 min on 2 cores
"""
from diffusers import WanPipeline

from dit_sparse.pipelines.profiling import measure
from dit_sparse.pipelines.tiny import embedded_model_path

pipe = WanPipeline.from_pretrained(str(embedded_model_path()), local_files_only=True)
prompts = open("docs/plans/calib.txt").read().split("\n")[:2]
cands = ["sliding-tile:tile=1x8x8,window=5x1x3", "neighborhood:kernel=5x9x9"]
for k in ("0.1", "0.125", "0.15", "0.25"):
    cands += [f"block-sparse:block=1x8x8,topk={k}", f"block-sparse:block=1x8x8,topk={k},far=1x8x8"]
cands += ["block-sparse:block=1x8x8,topk=0.1,far=1x8x8,sinks=16"]
m = measure(pipe, prompts, candidates=cands, num_inference_steps=20,
            sample_steps=[0, 2, 4, 6, 8, 10, 12, 14, 16, 18], height=128, width=128, num_frames=9, progress=False,
            call_kwargs=dict(guidance_scale=4.0), time_kernels=True, model_name="embedded:tiny-wan")
t = m.table
err = t.errors.mean(0)  # [layers, heads, candidates], mean over the sampled steps
print(f"{'candidate':60s} {'density':>7s} {'time':>6s}  " + "  ".join(t.layers))
for c, cand in enumerate(t.candidates):
    print(f"{cand.spec:60s} {t.density[..., c].mean():7.3f} {t.time[c]:6.3f}  "
          + "  ".join(f"{err[l, :, c].mean():14.3f}" for l in range(len(t.layers))))
