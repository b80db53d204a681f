"""The plans of the README's end-to-end table: one dense profiling pass of the embedded model at
9 x 128 x 128 on docs/plans/calib.txt, then selections from the same measurement.

    python docs/plans/make_plans.py      # ~3 min on 2 cores
    python docs/plans/make_plans.py --model /tmp/tw --out-dir /tmp/plans   # another WanPipeline folder

Candidates: neighbourhoods and sliding tiles local in space and spanning the clip's 5 latent
frames, one whole-frame tile (``tile=1x32x32``: every token of the query's frame, as the
spatial heads of Sparse VideoGen), and a temporal-only neighbourhood (``5x1x1``). Per-layer
plans (one pattern for a layer's heads) and per-head ones; the per-layer error table (with
each candidate's kernel time relative to dense, measured here) is printed so the choice can be
checked. The budget plans rank candidates by density; ``e10`` (every layer's error <= 0.1)
by measured kernel time, which on this CPU prefers 8 x 8 sliding tiles to neighbourhoods and
4 x 4 tilings of similar density. ``e10p`` is ``e10`` with a second phase: from step 10 on,
selected again on those steps under error bound 0.25 (late steps tolerate more error). The
README's table runs every configuration with 5 dense warm-up steps (``--dense-steps 5``).
"""
import argparse
from pathlib import Path

from dit_sparse.pipelines.profiling import measure
from dit_sparse.pipelines.tiny import embedded_model_path


def measure_at_128(description: str, candidates, out_dir_required: bool = False):
    """``(args, measurement)``: the command line (``--model``, ``--out-dir``) parsed, the out
    folder made, and one dense profiling pass of the pipeline at 9 x 128 x 128 (20 steps,
    guidance 4, 10 sampled steps, kernel times measured) on calib.txt's first two prompts."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", default=str(embedded_model_path()),
                    help="WanPipeline folder (default: the embedded model)")
    ap.add_argument("--out-dir", type=Path, required=out_dir_required, default=None if out_dir_required
                    else Path("docs/plans"), help="folder for the plans")
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)  # before the minutes of profiling
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(args.model, local_files_only=True)
    prompts = (Path(__file__).parent / "calib.txt").read_text().split("\n")[:2]
    m = measure(pipe, prompts, candidates=candidates, num_inference_steps=20,
                sample_steps=[0, 2, 4, 6, 8, 10, 12, 14, 16, 18], height=128, width=128, num_frames=9,
                progress=False, call_kwargs=dict(guidance_scale=4.0), time_kernels=True,
                model_name="embedded:tiny-wan" if args.model == str(embedded_model_path()) else None)
    print(m.error_summary())
    return args, m


def fixed_layers(table, specs, step_rows=None):
    """One pattern per layer, as the plan's ``LayerPlan`` list: ``specs[i]`` for every head of
    layer ``i``, recording the errors (mean over the sampled steps ``step_rows``, all of them
    when None) and densities ``table`` measured for it."""
    from dit_sparse import parse_pattern
    from dit_sparse.plan import HeadChoice, LayerPlan

    err = table.errors.mean(0) if step_rows is None else table.errors[step_rows].mean(0)  # [layers, heads, cands]
    out = []
    for i, (layer, spec) in enumerate(zip(table.layers, specs)):
        c = list(table.candidates).index(parse_pattern(spec))
        out.append(LayerPlan(layer, tuple(HeadChoice(table.candidates[c], float(err[i, h, c]),
                                                     float(table.density[i, h, c])) for h in range(table.heads))))
    return out


CANDIDATES = ["neighborhood:kernel=5x9x9", "neighborhood:kernel=5x15x15", "neighborhood:kernel=3x15x15",
              "neighborhood:kernel=5x21x21", "sliding-tile:tile=1x4x4,window=5x5x5",
              "sliding-tile:tile=1x8x8,window=5x3x3", "sliding-tile:tile=1x8x8,window=5x1x3",
              "sliding-tile:tile=1x4x4,window=5x3x3", "sliding-tile:tile=1x32x32,window=1x1x1",
              "neighborhood:kernel=5x3x3", "neighborhood:kernel=5x1x1"]

if __name__ == "__main__":
    args, m = measure_at_128("profile the README's plans", CANDIDATES)
    for name, kw in [("b25", dict(budget=0.25, max_dense_fraction=0.2, per_head=False)),
                     ("b25h", dict(budget=0.25, max_dense_fraction=0.2, per_head=True)),
                     ("b35h", dict(budget=0.35, max_dense_fraction=0.2, per_head=True)),
                     ("e10", dict(max_error=0.1, max_dense_fraction=0.25, per_head=False, cost="time")),
                     ("e10p", dict(max_error=0.1, phases=[(10, 0.25)], max_dense_fraction=0.25, per_head=False,
                                   cost="time"))]:
        p = m.plan(**kw)
        p.save(args.out_dir / f"plan128_{name}.json")
        print(name, p.summary())
