"""Clip PSNR against dense of patterns and plans on the embedded model at 9 x 128 x 128
(20 steps, guidance 4, seed 0), on the bench's default prompts; no timing (``dit-sparse
bench`` times). Patterns run with ``--dense-steps`` warm-up steps, plans with their own.

    python scripts/far_field_quality.py "sliding-tile:tile=1x8x8,window=5x1x3" \\
        "sliding-tile:tile=1x8x8,window=5x1x3,far=1x8x8" docs/plans/plan128_e10p.json
"""
import argparse

import numpy as np
import torch

import dit_sparse as ds
from dit_sparse.cli.bench import EMBEDDED_PROMPTS
from dit_sparse.metrics import clip_psnr, to_images
from dit_sparse.pipelines.cpu_conv import use_onednn_conv3d
from dit_sparse.pipelines.tiny import load_embedded_pipeline

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("configs", nargs="+", help="pattern specs or plan files (.json)")
ap.add_argument("--prompts", type=int, default=len(EMBEDDED_PROMPTS), help="how many of the default prompts")
ap.add_argument("--dense-steps", type=int, default=5, help="warm-up steps of the patterns (default 5)")
args = ap.parse_args()

pipe = load_embedded_pipeline()
use_onednn_conv3d(pipe)
pipe.set_progress_bar_config(disable=True)
call = dict(num_frames=9, height=128, width=128, num_inference_steps=20, guidance_scale=4.0, output_type="np")
prompts = list(EMBEDDED_PROMPTS)[:args.prompts]


def run(prompt, spec=None):
    generator = torch.Generator().manual_seed(0)
    if spec is None:
        return to_images(pipe(prompt, generator=generator, **call).frames[0])
    plan = spec.endswith(".json")
    with ds.applied(pipe, ds.Plan.load(spec) if plan else ds.parse_pattern(spec),
                    dense_steps=None if plan else args.dense_steps):
        return to_images(pipe(prompt, generator=generator, **call).frames[0])


dense = {p: run(p) for p in prompts}
print(f"{'config':66s} {'mean':>6s} {'min':>6s}  per prompt (clip PSNR, dB)")
for spec in args.configs:
    values = [clip_psnr(run(p, spec), dense[p]) for p in prompts]
    print(f"{spec:66s} {np.mean(values):6.2f} {np.min(values):6.2f}  " + " ".join(f"{v:.1f}" for v in values),
          flush=True)
