"""Does the model draw what the caption says? Colour, motion and outline scores of generated clips.

Generates clips for captions of the training distribution (``tiny_clips.sample_spec`` with a
dataset seed the training never used) and checks each against its caption. Every pixel is
snapped to the nearest of the six palette colours (``tiny_clips.COLORS``); then

* background: the most common colour of the clip is the captioned background;
* shape colour: the captioned shape colour covers 3-40% of the frames (the true shapes cover
  6-18%) and is the second most common colour;
* stray: the share of pixels nearest to neither captioned colour (lower is better);
* motion: the centroid of the shape-coloured pixels moves from the first to the last frame
  along the captioned direction (larger displacement component on the right axis with the
  right sign, at least 10% of the frame side; the true shapes travel 42%);
* outline: in the middle frame, the largest connected patch of shape-coloured pixels covers a
  share of its bounding box nearest to the captioned outline's: circle pi/4, square 1,
  triangle 1/2.

The same scores of the true clips (``tiny_clips.render``) are printed first: a check of the
checks (they must all pass there).

``--from-sigma S`` starts each clip not from pure noise but from its true clip's latent noised
to ``S`` (the first step of the schedule at or below ``S``; SDEdit, Meng et al. 2022), and runs
the rest of the schedule: at which noise level does the model lose what the clip shows? (The
shipped DiT's answer: docs/benchmarks.md, the embedded model's section.)

    python scripts/tiny_wan/caption_score.py                         # embedded model, 24 captions
    python scripts/tiny_wan/caption_score.py --model /tmp/tw --count 48
    python scripts/tiny_wan/caption_score.py --from-sigma 0.85 --guidance 1
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from dit_sparse.report import format_table

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the scripts beside this one, and scripts/eval_plan.py
import tiny_clips  # noqa: E402
from caption_gap import latent_stats, normalised_latents  # noqa: E402
from eval_plan import generate, load  # noqa: E402

NAMES = list(tiny_clips.COLORS)
PALETTE = np.asarray([tiny_clips.COLORS[n] for n in NAMES], np.float32)  # [6, 3] in [0, 1]
FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
CHECKS = ("background", "shape_colour", "motion", "outline")
DATASET_SEED = 777  # not a training seed: the training clips come from --seed 0


def labels(frames: np.ndarray) -> np.ndarray:
    """Nearest palette index of every pixel of ``[F, H, W, 3]`` frames in [0, 1] -> ``[F, H, W]``."""
    d = ((frames[..., None, :] - PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a ``[H, W]`` bool mask (all False when empty)."""
    seen = np.zeros_like(mask)
    best: List[tuple] = []
    h, w = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        stack, part = [start], []
        while stack:
            y, x = stack.pop()
            part.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(part) > len(best):
            best = part
    out = np.zeros_like(mask)
    if best:
        out[tuple(np.asarray(best).T)] = True
    return out


def fill_ratio(mask: np.ndarray) -> float:
    """Share of its bounding box that the mask's largest component covers (nan under 10 pixels)."""
    part = largest_component(mask)
    ys, xs = np.nonzero(part)
    if len(ys) < 10:
        return float("nan")
    return float(len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))


def score_clip(frames: np.ndarray, spec: tiny_clips.ClipSpec) -> Dict[str, float]:
    """Checks (1.0 pass / 0.0 fail) and the stray share of one ``[F, H, W, 3]`` clip."""
    lab = labels(frames)
    fg, bg = NAMES.index(spec.color), NAMES.index(spec.background)
    counts = np.bincount(lab.ravel(), minlength=len(NAMES))
    order = np.argsort(-counts)
    fg_share = counts[fg] / lab.size
    out = {"background": float(order[0] == bg),
           "shape_colour": float(order[1] == fg and 0.03 <= fg_share <= 0.4),
           "stray": float(1.0 - (counts[fg] + counts[bg]) / lab.size)}
    mask = lab == fg
    side = min(lab.shape[1:])
    moved = 0.0
    if mask[0].sum() >= 10 and mask[-1].sum() >= 10:
        (y0, x0), (y1, x1) = (np.argwhere(mask[i]).mean(0) for i in (0, -1))
        dx, dy = (x1 - x0) / side, (y1 - y0) / side
        want = tiny_clips.DIRECTIONS[spec.direction]
        along, across = (dx * want[0] + dy * want[1]), abs(dx * want[1] + dy * want[0])
        moved = float(along >= 0.1 and along > across)
    out["motion"] = moved
    ratio = fill_ratio(mask[len(mask) // 2])
    nearest = min(FILL, key=lambda s: abs(FILL[s] - ratio)) if math.isfinite(ratio) else None
    out["outline"] = float(nearest == spec.shape)
    return out


def summarise(rows: List[Dict[str, float]]) -> Dict[str, float]:
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def true_frames(spec: tiny_clips.ClipSpec, frames: int, size: int) -> np.ndarray:
    pixels = tiny_clips.render(spec, frames, size, size)  # [3, F, H, W] in [-1, 1]
    return np.ascontiguousarray(((pixels + 1.0) / 2.0).transpose(1, 2, 3, 0))


def denoise_from(pipe, spec: tiny_clips.ClipSpec, seed: int, call: Dict, sigma: float) -> np.ndarray:
    """``[F, H, W, 3]`` frames in [0, 1] sampled from ``spec``'s true clip noised to ``sigma``:
    the pipeline's scheduler, transformer, prompt embedding, classifier-free guidance (empty
    negative prompt, as WanPipeline's default) and VAE, from the first step at or below ``sigma``."""
    pixels = torch.from_numpy(tiny_clips.render(spec, call["num_frames"], call["height"], call["width"]))[None]
    z = normalised_latents(pipe, pixels)
    scheduler, guidance = pipe.scheduler, call["guidance_scale"]
    scheduler.set_timesteps(call["num_inference_steps"])
    first = int((scheduler.sigmas[:-1] > sigma + 1e-6).sum())
    start = float(scheduler.sigmas[first])
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))
    latents = (1 - start) * z + start * noise
    cond, uncond = pipe.encode_prompt(spec.caption, negative_prompt="", do_classifier_free_guidance=guidance > 1)
    for t in scheduler.timesteps[first:]:
        ts = t.expand(1)
        v = pipe.transformer(hidden_states=latents, timestep=ts, encoder_hidden_states=cond, return_dict=False)[0]
        if guidance > 1:
            v0 = pipe.transformer(hidden_states=latents, timestep=ts, encoder_hidden_states=uncond, return_dict=False)[0]
            v = v0 + guidance * (v - v0)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
    mean, std = latent_stats(pipe.vae)
    video = pipe.vae.decode(latents * std + mean, return_dict=False)[0]  # [1, 3, F, H, W] in [-1, 1]
    return ((video[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).float().numpy()


def print_table(results: Dict[str, Dict[str, float]]) -> None:
    keys = list(CHECKS) + ["stray"]
    rows = [["clips", *keys]] + [[name, *(f"{s[k]:.3f}" for k in keys)] for name, s in results.items()]
    print(format_table(rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=None,
                   help="WanPipeline folder (repeatable; default: the embedded tiny Wan)")
    p.add_argument("--count", type=int, default=24, help="how many captions")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0, help="generator seed of the first caption (then +1 each)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--from-sigma", type=float, default=None, metavar="S",
                   help="start from each true clip noised to S (0 < S <= 1) instead of from pure noise")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error(f"--count {args.count} must be >= 1")
    if args.from_sigma is not None and not 0.0 < args.from_sigma <= 1.0:
        p.error(f"--from-sigma {args.from_sigma} must be in (0, 1]")
    if args.threads:
        torch.set_num_threads(args.threads)

    specs = [tiny_clips.sample_spec(DATASET_SEED, i) for i in range(args.count)]
    results = {"true clips": summarise([score_clip(true_frames(s, args.frames, args.size), s) for s in specs])}
    call = dict(num_frames=args.frames, height=args.size, width=args.size, num_inference_steps=args.steps,
                guidance_scale=args.guidance)
    for model in args.model or [None]:
        pipe, _, name = load(model)
        pipe.set_progress_bar_config(disable=True)
        rows = []
        for i, spec in enumerate(specs):
            with torch.no_grad():
                if args.from_sigma is None:
                    (frames,), _ = generate(pipe, [spec.caption], [args.seed + i], call)  # [F, C, H, W]
                    frames = frames.permute(0, 2, 3, 1).float().numpy()
                else:
                    frames = denoise_from(pipe, spec, args.seed + i, call, args.from_sigma)
            rows.append(score_clip(frames, spec))
        results[name] = summarise(rows)
    print(f"{args.count} captions (dataset seed {DATASET_SEED}), {args.frames}x{args.size}x{args.size}, "
          f"{args.steps} steps, guidance {args.guidance:g}"
          + (f", from the true clips noised to sigma {args.from_sigma:g}" if args.from_sigma is not None else "")
          + "; share of clips passing each check, mean stray share")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
