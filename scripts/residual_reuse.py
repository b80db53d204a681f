"""Experiment (issue 26, item 3): reuse what the last dense step says about the keys a pattern drops.

At the last dense warm-up step, per query (or per 1 x 8 x 8 query block) and head, the softmax
mass inside the pattern ``m_in`` and the residual output of the rest,
``r = o_dense - m_in * o_pattern``, are recorded; every later (sparse) step returns
``m_in * o_pattern + r``. This is the statistics reuse of Re-ttention (Chen et al., 2025:
sparse steps reshaped with the attention statistics of earlier full steps), in its simplest
form, run through an observer (``ds.observe``), not a library feature yet. Clip PSNR
against dense on the embedded model at 9 x 128 x 128 (20 steps, guidance 4, seed 0, the
bench's 9 default prompts, 5 dense steps); docs/benchmarks.md has the numbers.

    python scripts/residual_reuse.py binary "sliding-tile:tile=1x8x8,window=1x3x3"
    python scripts/residual_reuse.py block "sliding-tile:tile=1x8x8,window=1x3x3"
    python scripts/residual_reuse.py residual "block-sparse:block=1x8x8,topk=0.15,far=1x8x8,sinks=16" --dense-steps 3

Builds the ``S x S`` scores once per layer at the last dense step: small models only.
"""
import argparse
import collections

import numpy as np
import torch

import dit_sparse as ds
from dit_sparse.cli.bench import EMBEDDED_PROMPTS
from dit_sparse.metrics import clip_psnr, to_images
from dit_sparse.pipelines.cpu_conv import use_onednn_conv3d
from dit_sparse.pipelines.tiny import load_embedded_pipeline
from dit_sparse.tiling import BlockGrid

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("mode", choices=["binary", "query", "block", "residual"],
                help="binary: the pattern alone; query / block: statistics per query / per 1x8x8 query block; "
                     "residual: the whole difference to dense (m_in = 1), for patterns with a far field, whose "
                     "pooled keys already stand in for the dropped mass")
ap.add_argument("pattern", help="a pattern spec (with a far field: mode residual)")
ap.add_argument("--dense-steps", type=int, default=5)
args = ap.parse_args()

pipe = load_embedded_pipeline()
use_onednn_conv3d(pipe)
pipe.set_progress_bar_config(disable=True)
call = dict(num_frames=9, height=128, width=128, num_inference_steps=20, guidance_scale=4.0, output_type="np")
pattern = ds.parse_pattern(args.pattern)
warm = args.dense_steps


def statistics(q, k, layout, dense, o_pattern):
    """``(m_in [B, S, H, 1], residual [B, S, H, D])`` of one call."""
    if args.mode == "residual":
        return torch.ones(()), dense - o_pattern
    qh, kh = q.float().transpose(1, 2), k.float().transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, H, S, S]
    inside = pattern.mask(layout)
    m_in = (torch.logsumexp(scores.masked_fill(~inside, float("-inf")), -1)
            - torch.logsumexp(scores, -1)).exp().transpose(1, 2)[..., None]
    residual = dense - m_in * o_pattern
    if args.mode == "block":
        grid = BlockGrid(layout.grid, (1, 8, 8))
        block = grid.token_block()

        def pool(x):
            sums = torch.zeros(x.shape[0], grid.num_blocks, *x.shape[2:]).index_add_(1, block, x)
            return (sums / grid.block_sizes()[None, :, None, None])[:, block]

        m_in, residual = pool(m_in), pool(residual)
    return m_in, residual


cache, calls = {}, collections.Counter()


def observer(call, _proceed):
    q, k, v, layout, step = call.query, call.key, call.value, call.layout, call.step
    key = (call.layer, calls[(call.layer, step)] % 2)  # classifier-free guidance: two calls per step
    calls[(call.layer, step)] += 1
    if step < warm:
        dense = ds.sparse_attention(q, k, v, ds.Full(), layout)
        if step == warm - 1 and args.mode != "binary":
            cache[key] = statistics(q, k, layout, dense, ds.sparse_attention(q, k, v, pattern, layout))
        return dense
    out = ds.sparse_attention(q, k, v, pattern, layout)
    if args.mode == "binary":
        return out
    m_in, residual = cache[key]
    return (m_in * out + residual).to(out.dtype)


def run(prompt, sparse: bool):
    generator = torch.Generator().manual_seed(0)
    if not sparse:
        return to_images(pipe(prompt, generator=generator, **call).frames[0])
    calls.clear()
    cache.clear()
    with ds.applied(pipe, pattern, dense_steps=0), ds.observe(pipe, observer):
        return to_images(pipe(prompt, generator=generator, **call).frames[0])


values = [clip_psnr(run(p, True), run(p, False)) for p in EMBEDDED_PROMPTS]
print(f"{args.mode:6s} {args.pattern:50s} mean {np.mean(values):6.2f} min {np.min(values):6.2f}  "
      + " ".join(f"{x:.1f}" for x in values))
