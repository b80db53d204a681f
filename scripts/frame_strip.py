"""Frame strips of captioned clips from a WanPipeline folder (the README's picture).

One row per prompt: the caption, then the clip's frames side by side. Dense attention by
default; ``--pattern`` or ``--plan`` render the same prompts and seeds with sparse attention
(a caption's seed is its row index, so strips made with and without sparsity line up).

    python scripts/frame_strip.py -o docs/tiny-wan-strip.png                 # embedded model, 9 x 64 x 64
    python scripts/frame_strip.py -o strip128.png --size 128 --plan plan.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

PROMPTS = (
    "a red circle moving left on a blue background",
    "a yellow square moving right on a black background",
    "a white triangle moving up on a green background",
    "a blue circle moving down on a yellow background",
    "a green square moving left on a white background",
    "a black triangle moving right on a red background",
)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", required=True, help="PNG to write")
    p.add_argument("--model", default=None, help="WanPipeline folder (default: the embedded tiny Wan)")
    p.add_argument("--size", type=int, default=64, help="height and width in pixels")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the built-in prompts")
    sparse = p.add_mutually_exclusive_group()
    sparse.add_argument("--pattern", default=None, help="pattern spec for every self-attention layer")
    sparse.add_argument("--plan", default=None, help="plan JSON")
    p.add_argument("--dense-steps", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from PIL import Image, ImageDraw

    import dit_sparse as ds
    from dit_sparse.atomic import atomic_path
    from dit_sparse.pipelines.tiny import load_embedded_pipeline

    if args.model is None:
        pipe = load_embedded_pipeline()
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(args.model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if args.pattern or args.plan:
        spec = ds.Plan.load(args.plan) if args.plan else ds.parse_pattern(args.pattern)
        ds.apply(pipe, spec, dense_steps=args.dense_steps if args.pattern else None)
    rows = []
    t0 = time.time()
    for i, prompt in enumerate(PROMPTS[: args.prompts]):
        video = pipe(prompt, num_frames=args.frames, height=args.size, width=args.size,
                     num_inference_steps=args.steps, guidance_scale=args.guidance,
                     generator=torch.Generator().manual_seed(i), output_type="np").frames[0]
        strip = (np.concatenate(list(video), 1) * 255).round().clip(0, 255).astype(np.uint8)
        label = Image.new("RGB", (strip.shape[1], 14), "white")
        ImageDraw.Draw(label).text((2, 1), prompt, fill="black")
        rows += [np.asarray(label), strip]
    out = Path(args.out)
    with atomic_path(out, "--out") as tmp:
        Image.fromarray(np.concatenate(rows, 0)).save(tmp)
    print(f"{len(rows) // 2} clips at {args.size}px in {time.time() - t0:.1f} s -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
