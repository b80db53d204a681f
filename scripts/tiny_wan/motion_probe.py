"""Does the transformer move the shape the captioned way? The path slope of its x0 prediction.

``caption_gap.py`` says whether the direction word changes the velocity error; this says what
the model draws. For rendered clips of the training distribution (``tiny_clips``, the dataset
seed of ``caption_gap.py``), the x0 prediction ``x_t - sigma * v`` is decoded by the pipeline's
VAE in two settings:

* ``ref``: one latent frame (``--ref``) clean, the others at ``--sigma`` (per-token timesteps,
  as the ``--frame-noise-prob`` steps of ``train_tiny.py`` train): where the shape is in the
  other frames follows only from where it is in that frame and from the caption's direction;
* ``all``: every frame at one noise level (``--levels``), as the sampler runs; there the
  noisy input still shows some of the motion by itself.

Per clip, the centroid of the shape-coloured pixels (palette-snapped as in
``caption_score.py``) is fitted by a line over the pixel frames; the slope along the captioned
direction, in units of the true clip's (``tiny_clips.TRAVEL`` over the clip), is 1 for the true
motion, 0 for a shape that stays put and -1 for the opposite motion. Each setting runs with the
true caption and with the opposite direction ("reversed"): a model that reads the direction
has ``true`` near 1 and ``reversed`` near -1 in the ``ref`` setting; one that copies the clean
frame's shape in place has both near 0.

    python scripts/tiny_wan/motion_probe.py                       # embedded model
    python scripts/tiny_wan/motion_probe.py --model /tmp/tw --clips 32 --sigma 0.995 --levels 0.9 0.8
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from dit_sparse.report import format_table

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the scripts beside this one, and scripts/eval_plan.py
import tiny_clips  # noqa: E402
from caption_gap import DATASET_SEED, latent_stats, normalised_latents, reverse_direction  # noqa: E402
from caption_score import NAMES, labels  # noqa: E402
from eval_plan import load  # noqa: E402
from train_tiny import per_token_timesteps  # noqa: E402

MIN_PIXELS = 10  # a frame counts when it has this many shape-coloured pixels


def path_slope(frames: np.ndarray, spec: tiny_clips.ClipSpec) -> float:
    """Slope of the shape's centroid along ``spec``'s direction over ``[F, H, W, 3]`` frames in
    [0, 1], in units of the true motion (1: as captioned; nan: fewer than 3 frames show it)."""
    lab = labels(frames)
    want = tiny_clips.DIRECTIONS[spec.direction]
    side = min(lab.shape[1:])
    t, along = [], []
    for i, frame in enumerate(lab == NAMES.index(spec.color)):
        if frame.sum() >= MIN_PIXELS:
            y, x = np.argwhere(frame).mean(0)
            t.append(i)
            along.append((x * want[0] + y * want[1]) / side)
    if len(t) < 3:
        return math.nan
    per_frame = tiny_clips.TRAVEL / (len(lab) - 1)
    return float(np.polyfit(t, along, 1)[0] / per_frame)


def noise_levels(setting: str, sigma: float, frames: int, ref: int) -> torch.Tensor:
    """Per-latent-frame noise levels ``[frames]`` of a setting: ``"ref"`` or ``"all@S"``."""
    if setting == "ref":
        levels = torch.full((frames,), sigma)
        levels[ref] = 0.0
        return levels
    return torch.full((frames,), float(setting.split("@")[1]))


def slopes(pipe, specs, x0: torch.Tensor, embeds: torch.Tensor, levels: torch.Tensor,
           seed: int = 0, batch: int = 8) -> List[float]:
    """Path slope of the decoded x0 prediction of each clip (normalised latents ``x0``, caption
    embeddings ``embeds``) under per-frame noise ``levels``."""
    mean, std = latent_stats(pipe.vae)
    out = []
    with torch.no_grad():
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        s = levels.view(1, 1, -1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        for i in range(0, len(specs), batch):
            emb = embeds[i : i + batch]
            n = len(emb)
            timestep = per_token_timesteps(levels[None].expand(n, -1), x0.shape[3:],
                                           pipe.transformer.config.patch_size)
            v = pipe.transformer(hidden_states=xt[i : i + n], timestep=timestep, encoder_hidden_states=emb,
                                 return_dict=False)[0].float()
            video = pipe.vae.decode((xt[i : i + n] - s * v) * std + mean, return_dict=False)[0]
            clips = ((video.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).numpy()  # [n, F, H, W, 3]
            out += [path_slope(c, spec) for c, spec in zip(clips, specs[i : i + n])]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="WanPipeline folder (default: the embedded tiny Wan)")
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--size", type=int, default=64, help="clip height and width in pixels")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--sigma", type=float, default=0.995, help="noise of the other frames in the ref setting")
    p.add_argument("--ref", type=int, default=2, help="the clean latent frame of the ref setting")
    p.add_argument("--levels", type=float, nargs="*", default=[0.9], help="noise levels of the all settings")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.clips < 1:
        p.error(f"--clips must be at least 1, got {args.clips}")
    if not 0.0 < args.sigma <= 1.0:
        p.error(f"--sigma must be in (0, 1], got {args.sigma}")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe, _, name = load(args.model)
    factor = pipe.vae_scale_factor_temporal
    if (args.frames - 1) % factor:
        p.error(f"--frames must be 1 + a multiple of {factor} for this VAE, got {args.frames}")
    latent_frames = (args.frames - 1) // factor + 1
    if not 0 <= args.ref < latent_frames:
        p.error(f"--ref must be a latent frame index in [0, {latent_frames - 1}] for --frames {args.frames}, "
                f"got {args.ref}")
    specs = [tiny_clips.sample_spec(DATASET_SEED, i) for i in range(args.clips)]
    pixels = torch.from_numpy(np.stack([tiny_clips.render(s, args.frames, args.size, args.size) for s in specs]))
    with torch.no_grad():  # encoded once, shared by every setting
        x0 = normalised_latents(pipe, pixels)
        embeds = [pipe.encode_prompt(caps, do_classifier_free_guidance=False)[0]
                  for caps in ([s.caption for s in specs], [reverse_direction(s.caption) for s in specs])]
    rows = [["setting", "true", "n", "reversed", "n"]]
    settings = ["ref"] + [f"all@{s:g}" for s in args.levels]
    for setting in settings:
        levels = noise_levels(setting, args.sigma, latent_frames, args.ref)
        row = [setting if setting != "ref" else f"ref {args.ref} clean, rest {args.sigma:g}"]
        for emb in embeds:
            values = np.asarray(slopes(pipe, specs, x0, emb, levels))
            ok = np.isfinite(values)
            row += [f"{values[ok].mean():+.3f}" if ok.any() else "nan", f"{int(ok.sum())}"]
        rows.append(row)
    print(f"{name}: path slope of the x0 prediction along the captioned direction "
          f"({args.clips} clips at {args.frames}x{args.size}x{args.size}; 1 = as captioned, 0 = still)")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
