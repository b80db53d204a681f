"""Block-sparse far-field plans for the embedded model at 9 x 128 x 128: one dense profiling
pass on docs/plans/calib.txt's first two prompts with block-sparse candidates (1 x 8 x 8
blocks, top 10-25% of key blocks, binary, with a pooled far field, and with 16 sinks
besides), then plans of one far-field pattern in every layer with 2 or 3 dense warm-up steps
recorded (the errors and densities they record are this measurement's).

    python docs/plans/make_far_plans.py      # ~5 min on 2 cores; writes docs/plans/plan128_bf*.json

The per-layer error table (relative L2 error of each layer's attention output against dense,
heads and sampled steps averaged, beside each candidate's kernel time relative to dense) is
printed so the choice can be checked. Per-layer selections from it under an error bound are
not shipped: the last layer's errors (0.20 at best, attending to single far tokens) put Full
there under any bound that keeps the other layers' far fields, and at bounds above 0.2 the
cheapest candidate is the binary 5 x 1 x 3 sliding tile in every layer; the per-layer error
does not rank what the picture needs here (docs/benchmarks.md).
"""
from make_plans import fixed_layers, measure_at_128  # this folder's make_plans.py (the script's own folder is on sys.path)

cands = ["sliding-tile:tile=1x8x8,window=5x1x3", "block-sparse:block=1x8x8,topk=0.25"]
for topk in (0.1, 0.125, 0.15, 0.2, 0.25):
    cands += [f"block-sparse:block=1x8x8,topk={topk},far=1x8x8", f"block-sparse:block=1x8x8,topk={topk},far=1x8x8,sinks=16"]
args, m = measure_at_128("profile the block-sparse far-field plans", cands)
# one far-field pattern in every layer, with fewer warm-up steps (the errors and densities
# the plan records are this measurement's, for that candidate; its bound the largest error)
from dit_sparse.plan import Plan  # noqa: E402

for name, spec, dense in [("bf15s3", "block-sparse:block=1x8x8,topk=0.15,far=1x8x8,sinks=16", 3),
                          ("bf20s3", "block-sparse:block=1x8x8,topk=0.2,far=1x8x8,sinks=16", 3),
                          ("bf20s2", "block-sparse:block=1x8x8,topk=0.2,far=1x8x8,sinks=16", 2)]:
    layers = fixed_layers(m.table, [spec] * len(m.table.layers))
    bound = max(layer.error for layer in layers)  # every layer's measured error is within it
    base = m.plan(max_error=bound, dense_bound=0.0, max_dense_fraction=0.2, per_head=False, cost="time")
    p = Plan(base.model, base.profile, dense, layers)
    p.save(args.out_dir / f"plan128_{name}.json")
    print(name, p.summary())
