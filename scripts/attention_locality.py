"""How local is the embedded tiny Wan model's self-attention?

Loads the embedded pipeline (``dit_sparse.pipelines.tiny``), runs one generation, and for
every self-attention layer (``blocks.<i>.attn1``) and every denoising step recomputes the
softmax attention from the layer's own q and k (after its norms and RoPE: the q, k that
Wan's processor hands to ``dispatch_attention_fn``). It prints, per layer, the mean
attention mass that falls inside a (T, H, W) = 3 x 5 x 5 neighbourhood of each query on
the token grid, beside what uniform attention would put there (the window's share of the
keys). Windows are NATTEN-style: shifted to stay inside the grid, so every query's window
holds the same number of keys.

    python scripts/attention_locality.py                      # training size, 9 x 64 x 64
    python scripts/attention_locality.py --height 128 --width 128
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_pipeline(path: str | None):
    if path is None:
        try:
            from dit_sparse.pipelines.tiny import load_embedded_pipeline
        except ImportError:  # running from a checkout that is not installed
            sys.path.insert(0, str(ROOT / "pipelines"))
            from tiny import load_embedded_pipeline
        return load_embedded_pipeline()
    from diffusers import WanPipeline

    return WanPipeline.from_pretrained(path, local_files_only=True)


def window_mask(grid: tuple[int, int, int], kernel: tuple[int, int, int]) -> torch.Tensor:
    """Bool ``[S, S]``: key inside the query's window (NATTEN non-causal, shifted at borders)."""
    axes = []
    for n, k in zip(grid, kernel):
        k = min(k, n)
        i = torch.arange(n)
        start = (i - k // 2).clamp(0, n - k)  # window shifted to stay inside the axis
        j = torch.arange(n)
        axes.append((j[None, :] >= start[:, None]) & (j[None, :] < start[:, None] + k))
    t, h, w = axes
    m = t[:, None, None, :, None, None] & h[None, :, None, None, :, None] & w[None, None, :, None, None, :]
    s = grid[0] * grid[1] * grid[2]
    return m.reshape(s, s)


class LocalityRecorder:
    """Accumulates, per self-attention layer, the attention mass inside the window: an
    observer (:func:`dit_sparse.observe`) of every layer, tagged by applying ``ds.Full()``."""

    def __init__(self, pipe, kernel=(3, 5, 5)):
        self.pipe = pipe
        self.kernel = kernel
        self.grid = None
        self.mask = None
        self.sums: dict[str, list[float]] = {}

    def _measure(self, q: torch.Tensor, k: torch.Tensor) -> float:
        """Mean over batch, heads and queries of the softmax mass inside the window."""
        scale = q.shape[-1] ** -0.5
        qf, kf = q.float().transpose(1, 2), k.float().transpose(1, 2)  # [B, heads, S, D]
        total, count = 0.0, 0
        for b in range(qf.shape[0]):
            for h in range(qf.shape[1]):
                p = torch.softmax(qf[b, h] @ kf[b, h].T * scale, dim=-1)
                total += (p * self.mask).sum().item()
                count += p.shape[0]
        return total / count

    def __call__(self, call, proceed):
        grid = call.layout.grid
        if grid != self.grid:
            self.grid, self.mask = grid, window_mask(grid, self.kernel)
        self.sums.setdefault(call.layer, []).append(self._measure(call.query, call.key))
        return proceed()

    @contextlib.contextmanager
    def capture(self):
        import dit_sparse as ds

        with ds.applied(self.pipe, ds.Full()), ds.observe(self.pipe, self):
            yield self


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded tiny-wan)")
    ap.add_argument("--prompt", default="a red circle moving left on a blue background")
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--kernel", type=int, nargs=3, default=(3, 5, 5), metavar=("T", "H", "W"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    rec = LocalityRecorder(pipe, tuple(args.kernel))
    with rec.capture(), torch.no_grad():
        pipe(
            args.prompt,
            num_frames=args.frames,
            height=args.height,
            width=args.width,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=torch.Generator().manual_seed(args.seed),
            output_type="latent",
        )
    s = rec.grid[0] * rec.grid[1] * rec.grid[2]
    uniform = rec.mask.sum().item() / (s * s)
    kt, kh, kw = args.kernel
    print(f"prompt: {args.prompt!r}; {args.frames} x {args.height} x {args.width} px, token grid "
          f"(T, H, W) = {rec.grid} = {s} tokens; {args.steps} steps, guidance {args.guidance}")
    print(f"attention mass inside a {kt}x{kh}x{kw} window (mean over steps, CFG branches, heads, queries)")
    print(f"{'layer':<16} {'window mass':>11} {'first step':>10} {'last step':>9} {'uniform':>8} {'ratio':>6}")
    for name, vals in rec.sums.items():
        mean = sum(vals) / len(vals)
        print(f"{name:<16} {mean:>11.3f} {vals[0]:>10.3f} {vals[-1]:>9.3f} {uniform:>8.3f} {mean / uniform:>6.1f}")


if __name__ == "__main__":
    main()
