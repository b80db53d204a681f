"""Benchmark: dit-sparse's CPU path vs dense SDPA vs compiled FlexAttention, one table per run.

For every grid x head_dim x dtype, and every pattern family at densities near the targets:
time of dense ``F.scaled_dot_product_attention`` (the faster of diffusers' ``[B, S, H, D]``
layout passed as transposed views and contiguous ``[B, H, S, D]`` tensors), of ``ds.sparse_attention``, of
``torch.compile(flex_attention)`` with the same mask (compile time and block-mask build time
excluded, compile time reported in its own column), the density counted at block
granularity, the ideal speedup (1 / density), the measured speedups and the percentage of
ideal, and the peak extra resident memory of the dit-sparse call.

FlexAttention gets its best case: tokens permuted tile-major by 3D blocks of 128 tokens
(permutation not timed), with a block mask from ``create_block_mask`` over a ``mask_mod``
that encodes the identical attention (window tables, or the same block selection).

    python scripts/bench_attention.py                      # the full table (long: ~1 h here)
    python scripts/bench_attention.py --grids 8x32x32 --head-dims 64 --dtypes float32 --no-flex
    python scripts/bench_attention.py --grids 16x32x32 --patterns neighborhood sliding_tile --far 1x8x8 --no-flex

``--far POOL`` adds a column: the same pattern with a far field of that pool
(``far_ms``, and ``far_cost``: its time over the pattern's own); block-sparse rows have none.

Absolute times move by ~30% from run to run on this machine; ratios within a run count,
and only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import math
import sys
import time

import torch
import torch.nn.functional as F

import dit_sparse as ds
from dit_sparse.tiling import BlockGrid, block_sparse_select

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


try:
    _LIBC = ctypes.CDLL("libc.so.6")  # glibc's malloc tuning; None elsewhere
except OSError:
    _LIBC = None


def _mallopt(mmap_threshold: int) -> bool:
    """Set glibc's mmap and trim thresholds (False, and nothing done, without glibc)."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(-3, mmap_threshold)) and bool(_LIBC.mallopt(-1, 2 * mmap_threshold))


def timed(fn, reps: int):
    """Fastest wall time of ``reps`` runs after one warm-up run (other load on the machine only
    adds time, so the minimum is the steadiest estimate).

    Timed with glibc's thresholds pinned at their adaptive ceiling (32 MiB mmap, 64 MiB
    trim), which is where a long-running process ends up: buffers below it are reused from
    the heap, larger ones come fresh from mmap and pay their page faults, as in real use.
    """
    _mallopt(32 << 20)
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_extra_mib(fn) -> float:
    """Peak extra resident memory of one call (MiB): with every buffer above 1 MiB straight
    from mmap and back to the OS on free, the resident high-water mark is what the call
    really holds at once (glibc would otherwise keep freed arenas resident and hide it)."""
    if not _mallopt(1 << 20):
        return float("nan")
    try:
        gc.collect()
        _LIBC.malloc_trim(0)  # hand freed heap memory back, or the call reuses it unseen
        base = _rss_kb("VmRSS:")
        if not _reset_peak():
            return float("nan")
        fn()
        return max((_rss_kb("VmHWM:") - base) / 1024, 0.0)
    finally:
        _mallopt(32 << 20)


# --------------------------------------------------------------------------------------
# patterns near a target density
# --------------------------------------------------------------------------------------


def candidates(family: str, grid):
    t, h, w = grid
    if family == "neighborhood":
        for kt in sorted({1, 3, 5, 7, 9, t}):
            for ks in (5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 31):
                if kt <= t and ks <= max(h, w):
                    yield ds.Neighborhood((kt, ks, ks))
    elif family == "sliding_tile":
        tile = (4, 8, 8)
        nt, nh, nw = (-(-n // b) for n, b in zip(grid, tile))
        for wt, wh, ww in itertools.product(range(1, nt + 1), range(1, nh + 1, 2), range(1, nw + 1, 2)):
            yield ds.SlidingTile(tile, (wt, wh, ww))
    elif family == "block_sparse":
        for k in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6):
            yield ds.BlockSparse((4, 8, 8), topk=k)
    else:
        raise ValueError(f"family={family!r}")


def pick(family: str, layout: ds.TokenLayout, target: float):
    best = min(candidates(family, layout.grid), key=lambda p: abs(math.log(p.density(layout) / target)))
    return best


# --------------------------------------------------------------------------------------
# FlexAttention with the same attention, tokens tile-major
# --------------------------------------------------------------------------------------


def tile_major_perm(grid, block=(2, 8, 8)):
    tokens, valid = BlockGrid(grid, block).block_token_table()
    return tokens.reshape(-1)[valid.reshape(-1)]


class Flex:
    def __init__(self):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self.create_block_mask = create_block_mask
        self.compiled = torch.compile(flex_attention, dynamic=False)
        self.compiled_shapes = {}

    def prepare(self, pattern, layout, q, k):
        """Block mask over tile-major tokens; returns (block_mask, perm)."""
        grid = layout.grid
        perm = tile_major_perm(grid)
        s = perm.numel()
        _, gh, gw = grid
        coords = torch.stack([perm // (gh * gw), (perm // gw) % gh, perm % gw], -1)
        if isinstance(pattern, ds.BlockSparse):
            bgrid = BlockGrid(grid, pattern.block)
            sel = block_sparse_select(pattern, layout, bgrid, q, k)[0]  # [H, nb, nb]
            blk = bgrid.token_block()[perm]

            def mask_mod(b, h, qi, ki):
                return sel[h, blk[qi], blk[ki]]

            # Per-head masks straight from the selection (create_block_mask would evaluate
            # the mask_mod on [H, S, S]: 24 GiB at 16,384 tokens).
            return self.from_selection(sel, blk, bgrid.num_blocks, mask_mod), perm
        else:
            # Per permuted token: its coordinates and window bounds (one level of indexing in
            # the mask_mod: Inductor's CPU flex template rejects nested captured lookups).
            axes = []
            for (lo, hi, d), c in zip(pattern.windows(layout), coords.unbind(-1)):
                axes.append((c.contiguous(), lo[c].contiguous(), hi[c].contiguous(),
                             (c % d).contiguous() if d > 1 else None))

            def inside(axis, qi, ki):
                c, lo, hi, group = axis
                ok = (c[ki] >= lo[qi]) & (c[ki] <= hi[qi])
                return ok if group is None else ok & (group[ki] == group[qi])

            def mask_mod(b, h, qi, ki):
                return inside(axes[0], qi, ki) & inside(axes[1], qi, ki) & inside(axes[2], qi, ki)

            heads = None
        bm = self.create_block_mask(mask_mod, 1, heads, s, s, device="cpu", BLOCK_SIZE=128)
        return bm, perm

    def from_selection(self, sel, blk, nb, mask_mod, block=128):
        """A BlockMask from a block-level selection ``sel [H, nb, nb]`` and the block of every
        permuted token: a flex tile is full when every one of its pairs is selected,
        partial (mask_mod evaluated) when some are."""
        from torch.nn.attention.flex_attention import BlockMask

        s = blk.numel()
        nf = -(-s // block)
        counts = torch.zeros(nf, nb, dtype=torch.float64)
        counts.index_put_((torch.arange(s) // block, blk), torch.ones(s, dtype=torch.float64), accumulate=True)
        touch = (counts > 0).double()
        sizes = counts.sum(1)
        selected = counts @ sel.double() @ counts.T  # [H, nf, nf] selected pairs per tile
        partial_or_full = (touch @ sel.double() @ touch.T) > 0
        full = selected == sizes[:, None] * sizes[None, :]
        partial = partial_or_full & ~full

        def table(m):
            num = m.sum(-1).to(torch.int32)[None]
            idx = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)[None]
            return num, idx

        kv_num, kv_idx = table(partial)
        full_num, full_idx = table(full)
        return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                        mask_mod=mask_mod, seq_lengths=(s, s))

    def run(self, q, k, v, bm, perm):
        qp, kp, vp = (t[:, perm].transpose(1, 2).contiguous() for t in (q, k, v))
        key = (tuple(qp.shape), qp.dtype, bm.kv_num_blocks.shape)
        compile_time = 0.0
        if key not in self.compiled_shapes:
            t0 = time.perf_counter()
            self.compiled(qp, kp, vp, block_mask=bm)
            compile_time = time.perf_counter() - t0
            self.compiled_shapes[key] = compile_time
        return (lambda: self.compiled(qp, kp, vp, block_mask=bm)), compile_time


# --------------------------------------------------------------------------------------


def parse_grid(text):
    return tuple(int(x) for x in text.split("x"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", nargs="+", default=["8x32x32", "16x32x32", "13x30x52"])
    parser.add_argument("--head-dims", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    parser.add_argument("--patterns", nargs="+", default=["neighborhood", "sliding_tile", "block_sparse"])
    parser.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.25, 0.5])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    parser.add_argument("--flex-max-density", type=float, default=1.0,
                        help="run FlexAttention only on rows up to this density (it is slow on CPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--far", default=None, metavar="POOL",
                        help="also time every static pattern with a far field of this pool, e.g. 1x8x8")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    flex = None if args.no_flex else Flex()
    print(f"# dit-sparse {ds.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.heads} heads, batch 1; times in ms (fastest of {args.reps} after a warm-up)")
    cols = ("grid", "S", "hd", "dtype", "pattern", "density", "ideal", "dense_ms", "ds_ms", "speedup",
            "%ideal", "flex_ms", "flex_x", "flex_compile_s", "ds_peak_MiB") + (("far_ms", "far_cost") if args.far else ())
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    torch.manual_seed(0)
    for grid_text, hd, dtype_name in itertools.product(args.grids, args.head_dims, args.dtypes):
        grid = parse_grid(grid_text)
        layout = ds.TokenLayout(grid)
        # a fresh Dynamo cache per configuration: past its recompile limit (8) flex_attention
        # silently falls back to an unfused eager path that builds the S x S scores
        torch._dynamo.reset()
        dtype = DTYPES[dtype_name]
        s = layout.seq_len
        q, k, v = (torch.randn(1, s, args.heads, hd).to(dtype) for _ in range(3))
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        # dense on diffusers' layout (transposed views) and on contiguous heads-major
        # tensors: the faster of the two is the baseline
        qh, kh, vh = (t.contiguous() for t in (qt, kt, vt))
        t_dense = min(timed(lambda: F.scaled_dot_product_attention(qt, kt, vt), args.reps),
                      timed(lambda: F.scaled_dot_product_attention(qh, kh, vh), args.reps))
        del qh, kh, vh
        for family, target in itertools.product(args.patterns, args.densities):
            p = pick(family, layout, target)
            if isinstance(p, ds.BlockSparse):
                density = p.density(layout, q=q, k=k)
            else:
                density = p.density(layout)
            def run_ds():
                return ds.sparse_attention(q, k, v, p, layout, backend="cpu")

            t_ds = timed(run_ds, args.reps)
            peak = peak_extra_mib(run_ds)
            flex_ms = flex_x = flex_compile = float("nan")
            if flex is not None and density <= args.flex_max_density:
                try:
                    bm, perm = flex.prepare(p, layout, q, k)
                    fn, flex_compile = flex.run(q, k, v, bm, perm)
                    t_flex = timed(fn, args.reps)
                    # the same attention? (flex works on tile-major tokens, heads-major)
                    ref = run_ds()[:, perm].transpose(1, 2).float()
                    err = (fn().float() - ref).abs().max().item()
                    if err > (1e-3 if dtype == torch.float32 else 5e-2):
                        print(f"# flex and dit-sparse differ for {p}: max |diff| {err:.3g}", file=sys.stderr)
                    flex_ms, flex_x = t_flex * 1e3, t_dense / t_flex
                except Exception as exc:  # report, keep benchmarking
                    print(f"# flex failed for {p}: {type(exc).__name__}: {exc}", file=sys.stderr)
            speed = t_dense / t_ds
            row = (grid_text, s, hd, dtype_name, repr(p).replace("Neighborhood", "NA").replace("SlidingTile", "STA")
                   .replace("BlockSparse", "BS").replace(", dilation=(1, 1, 1), stride=(1, 1, 1)", "")
                   .replace(", threshold=None", "").replace(", far=None", ""),
                   f"{density:.3f}", f"{1 / density:.2f}", f"{t_dense * 1e3:.0f}", f"{t_ds * 1e3:.0f}",
                   f"{speed:.2f}", f"{100 * speed * density:.0f}%", f"{flex_ms:.0f}", f"{flex_x:.2f}",
                   f"{flex_compile:.1f}", f"{peak:.0f}")
            if args.far:
                far_ms = far_cost = float("nan")
                if not isinstance(p, ds.BlockSparse):
                    with_far = ds.Pattern.from_dict(dict(p.to_dict(), far={"pool": list(parse_grid(args.far))}))
                    t_far = timed(lambda: ds.sparse_attention(q, k, v, with_far, layout, backend="cpu"), args.reps)
                    far_ms, far_cost = t_far * 1e3, t_far / t_ds
                row += (f"{far_ms:.0f}", f"{far_cost:.2f}x")
            print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
