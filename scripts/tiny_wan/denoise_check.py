"""Where a tiny Wan model fails: its one-step x0 prediction at several noise levels.

Rows of the PNG: training clips (frames 0, 4, 8 of each), their VAE reconstructions, then
``x0 = x_t - sigma * v`` decoded at each ``--sigmas`` level, with the true captions. A model
that draws the captioned shape at sigma 0.6 but not at 0.9 has a weak high-noise end: there
the caption alone must say what to draw.

    python scripts/tiny_wan/denoise_check.py -o check.png --model /path/to/WanPipeline/folder
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_clips  # noqa: E402
from caption_gap import latent_stats  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", required=True, help="PNG to write")
    p.add_argument("--model", default=None, help="WanPipeline folder (default: the embedded tiny Wan)")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="dataset seed of the clips")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.3, 0.6, 0.9])
    args = p.parse_args(argv)
    from diffusers import WanPipeline
    from PIL import Image

    from dit_sparse.pipelines.tiny import embedded_model_path

    pipe = WanPipeline.from_pretrained(args.model or str(embedded_model_path()))
    vae, transformer = pipe.vae, pipe.transformer
    mean, std = latent_stats(vae)
    x, captions = tiny_clips.make_batch(args.seed, 0, args.clips)
    x = torch.from_numpy(x)
    n = len(captions)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        z0 = (z - mean) / std
        emb = pipe.encode_prompt(captions, do_classifier_free_guidance=False, max_sequence_length=512)[0]
        rows = [x, vae.decode(z).sample]
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
        for sigma in args.sigmas:
            xt = (1 - sigma) * z0 + sigma * noise
            v = transformer(hidden_states=xt, timestep=torch.full((n,), sigma * 1000), encoder_hidden_states=emb,
                            return_dict=False)[0]
            rows.append(vae.decode((xt - sigma * v) * std + mean).sample)
    frames = [0, x.shape[2] // 2, x.shape[2] - 1]
    strips = []
    for r in rows:
        r = ((r.clamp(-1, 1) + 1) * 127.5).round().byte()
        strips.append(torch.cat([r[i, :, f] for i in range(n) for f in frames], dim=2))
    Image.fromarray(torch.cat(strips, dim=1).permute(1, 2, 0).numpy()).save(args.out)
    print("rows: clips, VAE, " + ", ".join(f"x0 at sigma {s}" for s in args.sigmas))
    print("\n".join(captions))


if __name__ == "__main__":
    main()
