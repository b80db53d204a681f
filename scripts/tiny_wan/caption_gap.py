"""Does the transformer read the caption? Velocity error with the true, a wrong and no caption.

For rendered clips of the training distribution (``tiny_clips``, a dataset seed the training
never used), encoded by the pipeline's own VAE and normalised as the pipeline does, the
flow-matching velocity error ``|v(x_t, sigma, text) - (noise - x0)|^2`` is measured at each
``--sigmas`` level with the clip's own caption, with the next clip's caption ("wrong"), with its
own caption but the opposite direction ("reversed") and with the empty prompt, all embedded by
``pipe.encode_prompt`` exactly as at inference (padded to ``max_sequence_length``). A model
that reads its caption has ``true < empty < wrong`` where the noise hides the content (sigma
near 1); a model whose ``true`` equals ``empty`` there draws its colours from the noise,
whatever the prompt says; one whose ``reversed`` equals ``true`` ignores the direction word
(moves its shapes, if at all, whichever way the noise says).

    python scripts/tiny_wan/caption_gap.py                         # embedded model
    python scripts/tiny_wan/caption_gap.py --model /tmp/tw --clips 48 --sigmas 0.5 0.9 0.97 1.0
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from dit_sparse.report import format_table

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the scripts beside this one, and scripts/eval_plan.py
import tiny_clips  # noqa: E402
from tiny_clips import OPPOSITE, reverse_direction  # noqa: E402,F401  (re-exported)
from eval_plan import load  # noqa: E402

DATASET_SEED = 778  # not a training seed (training: 0; caption_score: 777)
VARIANTS = ("true", "wrong", "reversed", "empty")


def latent_stats(vae) -> tuple:
    """``(mean, std)`` of an ``AutoencoderKLWan``'s config, shaped ``[1, C, 1, 1, 1]``:
    WanPipeline decodes ``z * std + mean``, so the transformer's units are ``(z - mean) / std``."""
    return tuple(torch.tensor(v).view(1, -1, 1, 1, 1) for v in (vae.config.latents_mean, vae.config.latents_std))


def normalised_latents(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """The VAE posterior mode of ``[N, 3, F, H, W]`` pixels in [-1, 1], in the transformer's units."""
    mean, std = latent_stats(pipe.vae)
    return (pipe.vae.encode(pixels).latent_dist.mode() - mean) / std


def velocity_errors(transformer, x0: torch.Tensor, embeds: Dict[str, torch.Tensor], sigmas: Sequence[float],
                    seed: int = 0, batch: int = 8) -> Dict[float, Dict[str, float]]:
    """``{sigma: {variant: mean squared velocity error}}`` with one noise draw shared by all."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    target = noise - x0
    out = {}
    for sigma in sigmas:
        xt = (1 - sigma) * x0 + sigma * noise
        row = {}
        for name, emb in embeds.items():
            total = 0.0
            for i in range(0, len(x0), batch):
                t = torch.full((len(xt[i : i + batch]),), sigma * 1000.0)
                pred = transformer(hidden_states=xt[i : i + batch], timestep=t,
                                   encoder_hidden_states=emb[i : i + batch], return_dict=False)[0]
                total += (pred.float() - target[i : i + batch]).square().sum().item()
            row[name] = total / target.numel()
        out[sigma] = row
    return out


def table(errors: Dict[float, Dict[str, float]]) -> str:
    rows: List[List[str]] = [["sigma", *VARIANTS, "wrong - true", "reversed - true", "empty - true"]]
    for sigma, e in errors.items():
        rows.append([f"{sigma:g}", *(f"{e[v]:.4f}" for v in VARIANTS),
                     *(f"{e[v] - e['true']:+.4f}" for v in ("wrong", "reversed", "empty"))])
    return format_table(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="WanPipeline folder (default: the embedded tiny Wan)")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--size", type=int, default=64, help="clip height and width in pixels")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 0.9, 0.97, 1.0])
    p.add_argument("--max-sequence-length", type=int, default=512, help="text padding, as WanPipeline's")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.clips < 2:
        p.error(f"--clips must be at least 2 (a wrong caption is another clip's), got {args.clips}")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe, _, name = load(args.model)
    pixels, captions = tiny_clips.make_batch(DATASET_SEED, 0, args.clips, frames=args.frames,
                                             height=args.size, width=args.size)
    wrong = captions[1:] + captions[:1]
    reversed_ = [reverse_direction(c) for c in captions]
    with torch.no_grad():
        x0 = normalised_latents(pipe, torch.from_numpy(pixels))
        embeds = {
            variant: pipe.encode_prompt(caps, do_classifier_free_guidance=False,
                                        max_sequence_length=args.max_sequence_length)[0]
            for variant, caps in (("true", captions), ("wrong", wrong), ("reversed", reversed_),
                                  ("empty", [""] * len(captions)))
        }
        errors = velocity_errors(pipe.transformer, x0, embeds, args.sigmas)
    print(f"{name}: velocity error of {args.clips} clips at {args.frames}x{args.size}x{args.size}, "
          f"text padded to {args.max_sequence_length}")
    print(table(errors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
