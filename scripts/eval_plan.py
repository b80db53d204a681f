"""Does a profiled plan beat the best uniform pattern at the same density?

Generates the same evaluation prompts and seeds (never the calibration prompts) under

  (a) dense attention,
  (b) the profiled plan (per layer and head patterns, with its dense warm-up steps),
  (c) the best single pattern applied to every layer and head with the same warm-up: the
      candidate with the lowest measured error among those at most as dense as the budget,

and prints the quality of (b) and (c) against (a), as ``dit-sparse bench`` measures it: the
clip PSNR (the MSE over every pixel of every frame of a clip) and the clip SSIM (the mean over
its frames) of each (prompt, seed), averaged over them (:mod:`dit_sparse.metrics`); then the
mean density and the wall time. The plan is profiled here with ``budget`` = the
uniform pattern's density (so the plan is never denser than (c)) unless ``--plan`` is given.
The uniform pattern's error is measured on the same profiling run (the warm-up steps apart).

    python scripts/eval_plan.py                          # the embedded tiny Wan model
    python scripts/eval_plan.py --model /tmp/tiny-wan --steps 8 --height 32 --width 32 --frames 5
    python scripts/eval_plan.py --budget 0.3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import dit_sparse as ds
from dit_sparse.metrics import clip_psnr, clip_ssim, to_images
from dit_sparse.plan import pattern_spec
from dit_sparse.report import format_table
from dit_sparse.patterns import Pattern

CALIBRATION = [
    "a red circle moving left on a blue background",
    "a green square moving up on a black background",
    "a yellow triangle moving right on a white background",
    "a blue circle moving down on a red background",
]
EVALUATION = [
    "a white square moving left on a green background",
    "a red triangle moving down on a yellow background",
    "a black circle moving right on a white background",
]


def load(model: Optional[str]):
    """``(pipeline, default call kwargs, name)``; its Conv3d layers run through oneDNN on CPU as in
    the CLI (``dit_sparse.pipelines.cpu_conv``)."""
    from dit_sparse.pipelines.cpu_conv import use_onednn_conv3d

    if model is None:
        from dit_sparse.pipelines.tiny import DEFAULT_CALL_KWARGS, load_embedded_pipeline

        pipe, kwargs, name = load_embedded_pipeline(), dict(DEFAULT_CALL_KWARGS), "embedded:tiny-wan"
    else:
        from diffusers import DiffusionPipeline

        pipe, kwargs, name = DiffusionPipeline.from_pretrained(model, local_files_only=True), {}, model
    use_onednn_conv3d(pipe)
    return pipe, kwargs, name


def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], kwargs: Dict) -> tuple:
    """Frames ``[F, C, H, W]`` per (prompt, seed) and the total wall time."""
    out, start = [], time.perf_counter()
    for prompt in prompts:
        for seed in seeds:
            frames = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).frames
            out.append(to_images(frames[0]).clamp(0, 1))
    return out, time.perf_counter() - start


def video_size(args, defaults: Dict) -> Dict[str, int]:
    """``num_frames`` / ``height`` / ``width`` from ``args`` (``frames``, ``height``, ``width``),
    else the model's defaults; unset ones left to the pipeline."""
    given = (("num_frames", args.frames), ("height", args.height), ("width", args.width))
    size = {key: value or defaults.get(key) for key, value in given}
    return {key: value for key, value in size.items() if value is not None}


def quality(frames: List[torch.Tensor], reference: List[torch.Tensor]):
    """``(clip PSNR, clip SSIM)`` of ``[F, C, H, W]`` clips against theirs, averaged over the clips."""
    p = [clip_psnr(x, r) for x, r in zip(frames, reference)]
    s = [clip_ssim(x, r) for x, r in zip(frames, reference)]
    return sum(p) / len(p), sum(s) / len(s)


def best_uniform(candidates: List[dict], budget: float) -> dict:
    """The candidate with the lowest measured mean error among those with density <= budget."""
    fits = [c for c in candidates if c["density"] <= budget + 1e-9]
    if not fits:
        cheapest = min(c["density"] for c in candidates)
        raise SystemExit(f"no candidate has density <= {budget}; the cheapest has {cheapest:.3f}")
    return min(fits, key=lambda c: (c["error"], c["density"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded tiny Wan)")
    parser.add_argument("--plan", default=None, help="evaluate this plan instead of profiling one")
    parser.add_argument("--budget", type=float, default=0.3, help="density budget of the uniform pattern")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--calibration-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--save-plan", default=None, help="write the profiled plan here")
    parser.add_argument("--extra", default=None, help="extra pipeline kwargs as k=v,k=v (ints), e.g. "
                                                      "max_sequence_length=8")
    args = parser.parse_args(argv)

    pipe, defaults, name = load(args.model)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    size = video_size(args, defaults)
    steps = args.steps or defaults.get("num_inference_steps", 20)
    guidance = args.guidance_scale if args.guidance_scale is not None else defaults.get("guidance_scale", 4.0)
    extra = {}
    for item in filter(None, (args.extra or "").split(",")):
        key, _, value = item.partition("=")
        extra[key] = int(value)
    call = dict(num_inference_steps=steps, guidance_scale=guidance, **size, **extra)

    if args.plan:
        plan = ds.Plan.load(args.plan)
        candidates = plan.profile.get("candidates") or []
        uniform = best_uniform(candidates, plan.mean_density)
    else:
        from dit_sparse.pipelines.profiling import measure

        t0 = time.perf_counter()
        measured = measure(pipe, CALIBRATION, num_inference_steps=steps, seeds=args.calibration_seeds, progress=True,
                           model_name=name, call_kwargs=dict(guidance_scale=guidance, **extra), **size)
        probe = measured.plan(budget=1.0)  # every candidate's measured error and density
        uniform = best_uniform(probe.profile["candidates"], args.budget)
        plan = measured.plan(budget=uniform["density"])
        print(f"profiled in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if args.save_plan:
            plan.save(args.save_plan)
    pattern = Pattern.from_dict(uniform["pattern"])
    print(plan.summary())
    print()

    dense, t_dense = generate(pipe, EVALUATION, args.seeds, call)
    with ds.applied(pipe, plan):
        planned, t_plan = generate(pipe, EVALUATION, args.seeds, call)
    with ds.applied(pipe, pattern, dense_steps=plan.dense_steps):
        uniform_frames, t_uniform = generate(pipe, EVALUATION, args.seeds, call)

    rows = [("dense", "full", 1.0, float("inf"), 1.0, t_dense, None),
            ("plan", f"{len(plan.layers)} layers, per head", plan.mean_density, *quality(planned, dense), t_plan,
             plan.mean_error),
            ("uniform", pattern_spec(pattern), uniform["density"], *quality(uniform_frames, dense), t_uniform,
             uniform["error"])]
    print(f"model {name}; {len(EVALUATION)} evaluation prompts x {len(args.seeds)} seeds (not used for profiling); "
          f"{steps} steps, {plan.dense_steps} dense warm-up step(s) for plan and uniform; size {size}")
    header = ("run", "attention", "density", "clip PSNR dB", "SSIM", "time s", "profiled err")
    table = [header] + [(r[0], r[1], f"{r[2]:.3f}", "inf" if r[3] == float("inf") else f"{r[3]:.2f}",
                         f"{r[4]:.4f}", f"{r[5]:.1f}", "" if r[6] is None else f"{r[6]:.4f}") for r in rows]
    print(format_table(table, left=2))
    better = rows[1][3] > rows[2][3] and rows[1][4] > rows[2][4]
    print(f"\nplan {'beats' if better else 'does NOT beat'} the uniform pattern "
          f"(PSNR {rows[1][3]:.2f} vs {rows[2][3]:.2f} dB, SSIM {rows[1][4]:.4f} vs {rows[2][4]:.4f}) "
          f"at density {rows[1][2]:.3f} vs {rows[2][2]:.3f}")
    return 0 if better else 1


if __name__ == "__main__":
    sys.exit(main())
