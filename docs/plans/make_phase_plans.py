"""Block-sparse far-field plans whose selection changes by layer and by phase, for the embedded
model at 9 x 128 x 128: one dense profiling pass on docs/plans/calib.txt's first two prompts
(the errors and densities the plans record are this measurement's), then the plans below.

    python docs/plans/make_phase_plans.py            # ~7 min on 2 cores; writes docs/plans/plan128_bp*.json
    python docs/plans/make_phase_plans.py --evaluate # also clip PSNR of each plan on the calibration prompts

How the schedules were chosen (end-to-end calibration, by hand): every layer of the uniform
``plan128_bf15s3`` (top 15% of key blocks, far field 1 x 8 x 8, 16 sinks, 3 dense steps) was
made sparser or denser on its own and the clip PSNR against dense measured on the calibration
prompts below (never the bench's). The middle layer barely notices its selection (top 10%
instead of 15%: -0.1 dB), the first a little (-0.7 dB), the last most (-1.5 dB; top 25%: +2.4
dB); the per-layer relative error of the profiling pass ranks them the same way but cannot say
what a dB costs. Late steps (from step 10) take sparser selections, as in ``plan128_e10p``. So
the plans move density from the middle layer and the late steps to the last layer, whose 32
sinks (instead of 16) add another +0.2 dB, 64 sinks +0.7 dB and 128 sinks +1.1 dB (32 sinks
instead of 16 in the other layers add nothing). ``bp2s`` is ``bp2`` with 128 sinks in the last
layer; ``bp1s`` spends that gain on a second warm-up step that is sparse (top 20% / 10% / 30%)
instead of dense, ``bp1s256`` on a denser one (30% / 20% / 40%) with 256 sinks. A one-step
phase between two profiled steps records the errors of the profiled step nearest it. Clip PSNR
mean / worst on these six prompts (seed 0): ``plan128_bf15s3`` 26.30 / 20.28, ``bp3`` 27.83 /
20.11, ``bp2`` (2 dense steps) 26.66 / 18.96, ``bp2s`` 27.53 / 20.14, ``bp1s`` (1 dense step)
26.48 / 19.23, ``bp1s256`` 27.43 / 20.51; the full search is in docs/benchmarks.md, with the
bench's held-out prompts and the timings.
"""
import sys

from make_plans import fixed_layers, measure_at_128  # this folder's make_plans.py (the script's own folder is on sys.path)

# calib.txt's two prompts and four more of the model's vocabulary, none of them a bench prompt
CALIBRATION = ["a green triangle moving down on a blue background", "a white square moving left on a red background",
               "a blue square moving right on a white background", "a red triangle moving down on a green background",
               "a white circle moving left on a black background", "a black square moving up on a yellow background"]


def spec(topk: float, sinks: int = 16) -> str:
    return f"block-sparse:block=1x8x8,topk={topk},far=1x8x8,sinks={sinks}"


def early(last_sinks: int, topk=(0.15, 0.08, 0.25)):
    """Per-layer specs of steps 2-9 (or 3-9): ``topk`` per layer, 16 sinks but in the last layer."""
    return [spec(topk[0]), spec(topk[1]), spec(topk[2], last_sinks)]


def late(last_sinks: int):
    """Per-layer specs from step 10."""
    return early(last_sinks, (0.1, 0.05, 0.15))


# name: (dense steps, [(first step, [per-layer spec]), ...]): each phase runs until the next
PLANS = {
    "bp3": (3, [(3, early(32)), (10, late(32))]),
    "bp2": (2, [(2, early(32)), (10, late(32))]),
    # the last layer with 128 sinks instead of 32 (+0.9 dB on the calibration prompts)
    "bp2s": (2, [(2, early(128)), (10, late(128))]),
    # ... which pays for making the second warm-up step sparse instead of dense
    "bp1s": (1, [(1, early(128, (0.2, 0.1, 0.3))), (2, early(128)), (10, late(128))]),
    # ... with a denser sparse warm-up step and 256 sinks in the last layer
    "bp1s256": (1, [(1, early(256, (0.3, 0.2, 0.4))), (2, early(256)), (10, late(256))]),
}

evaluate = "--evaluate" in sys.argv
if evaluate:
    sys.argv.remove("--evaluate")
cands = sorted({s for dense, phases in PLANS.values() for start, specs in phases for s in specs})
args, m = measure_at_128("profile the block-sparse far-field plans with per-layer phases", cands)

from dit_sparse.plan import Plan  # noqa: E402

steps = list(m.table.steps)


def sampled_rows(first: int, end) -> list:
    """The profiled steps in ``first .. end - 1`` (rows of the error table), or the profiled
    step nearest ``first`` where none falls in (a one-step phase between sampled steps)."""
    rows = [i for i, s in enumerate(steps) if s >= first and (end is None or s < end)]
    return rows or [min(range(len(steps)), key=lambda i: abs(steps[i] - first))]


base = m.plan(max_error=1.0, dense_bound=0.0, max_dense_fraction=0.2, per_head=False, cost="time")
plans = {}
for name, (dense, phases) in PLANS.items():
    ends = [start for start, _ in phases[1:]] + [None]
    layers = [fixed_layers(m.table, specs, sampled_rows(start, end)) for (start, specs), end in zip(phases, ends)]
    profile = dict(base.profile, max_error=max(layer.error for phase in layers for layer in phase))
    later = [(start, phase) for (start, _), phase in zip(phases[1:], layers[1:])]
    p = Plan(base.model, profile, dense, layers[0], later)
    p.save(args.out_dir / f"plan128_{name}.json")
    plans[name] = p
    print(name, p.summary())

if evaluate:
    import numpy as np
    import torch
    from diffusers import WanPipeline

    import dit_sparse as ds
    from dit_sparse.metrics import clip_psnr, to_images

    pipe = WanPipeline.from_pretrained(args.model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    call = dict(num_frames=9, height=128, width=128, num_inference_steps=20, guidance_scale=4.0, output_type="np")

    def run(prompt):
        return to_images(pipe(prompt, generator=torch.Generator().manual_seed(0), **call).frames[0])

    dense = {p: run(p) for p in CALIBRATION}
    for name, plan in plans.items():
        with ds.applied(pipe, plan):
            values = [clip_psnr(run(p), dense[p]) for p in CALIBRATION]
        print(f"plan128_{name}: clip PSNR {np.mean(values):.2f} mean, {np.min(values):.2f} worst "
              f"({', '.join(f'{v:.1f}' for v in values)})")
