"""From a pattern and a layout to the tables the kernels run on.

Two consumers, one source of truth (the per-axis window tables of ``patterns.py``):

* The CPU kernel computes attention group by group. A *query group* is a 3D box of query
  tokens (one segment per axis, each segment inside one dilation group); its keys are the
  union of its queries' windows, which is again a box. Because a neighborhood mask is the
  AND of three 1D masks, everything here is separable: the cost of a choice of segment
  lengths is a product of three per-axis sums, so the best segmentation is found by a small
  exhaustive search under a cost model of this machine's fused SDPA kernel (a call has a
  fixed overhead, and small query chunks run below peak).
* The Triton kernel walks a :class:`~dit_sparse.blockmask.BlockMask` over equal 3D blocks of
  a power-of-two token count (built in ``blockmask.py`` from the same window tables).

Everything is cached per (pattern, layout): nothing is rebuilt on a call.

This module imports no pattern class: it asks a static pattern for its window tables
(``pattern.windows(layout)``, and ``pattern.stride`` where it has one), and reads a
block-sparse pattern's ``topk`` / ``threshold``, so that ``patterns.py`` can count its
densities from a tiling without an import cycle.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .layout import TokenLayout

# Cost model of one CPU call, in units of "one query-key pair on every head" at 12 heads x 64.
# The constants are the model's parameters, calibrated with scripts/bench_attention.py on an
# AVX-512 CPU (docs/benchmarks.md): a call costs as much as CALL_COST_PAIRS pairs; chunks of
# q rows run at 1 / (1 + SMALL_Q_ROWS / rows) of peak; a boolean mask multiplies by MASK_COST.
CALL_COST_PAIRS = 1400.0
SMALL_Q_ROWS = 110.0
MASK_COST = 1.15
# Ready-made additive masks are kept per (tiling, dtype) up to this many elements in all;
# beyond it they are rebuilt from their per-axis factors at every call.
MASK_CACHE_ELEMENTS = 64 * 2**20
SEGMENT_MULTIPLES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def axis_mask(lo: torch.Tensor, hi: torch.Tensor, dilation: int) -> torch.Tensor:
    """Dense ``[L, L]`` bool mask of one axis from its window table (small: L <= a few hundred)."""
    i = torch.arange(lo.numel())
    same_group = (i[None, :] % dilation) == (i[:, None] % dilation)
    return same_group & (i[None, :] >= lo[:, None]) & (i[None, :] <= hi[:, None])


@dataclass
class AxisSegment:
    """One query segment of one axis: its coordinates, its keys, and its mask if not trivial."""

    q: torch.Tensor            # [nq] int64 absolute coordinates
    k: torch.Tensor            # [nk] int64 absolute coordinates
    mask: Optional[torch.Tensor]  # [nq, nk] bool, None when every query sees every key


def axis_segments(lo: torch.Tensor, hi: torch.Tensor, dilation: int, length: int) -> List[AxisSegment]:
    """Cut one axis into segments of ``length`` consecutive queries of one dilation group."""
    segs = []
    size = lo.numel()
    for g in range(min(dilation, size)):
        coords = torch.arange(g, size, dilation)
        for c in range(0, coords.numel(), length):
            qc = coords[c:c + length]
            qlo, qhi = lo[qc], hi[qc]
            kc = torch.arange(int(qlo.min()), int(qhi.max()) + 1, dilation)
            trivial = bool((qlo == qlo[0]).all() and (qhi == qhi[0]).all())
            mask = None if trivial else (kc[None, :] >= qlo[:, None]) & (kc[None, :] <= qhi[:, None])
            segs.append(AxisSegment(qc, kc, mask))
    return segs


@dataclass
class _AxisStats:
    length: int
    segments: List[AxisSegment]
    pairs: float          # sum over segments of nq * nk
    plain_pairs: float    # the same over segments without a mask
    exact: float          # sum over queries of their window size

    @classmethod
    def of(cls, lo, hi, dilation, length):
        segs = axis_segments(lo, hi, dilation, length)
        pairs = sum(s.q.numel() * s.k.numel() for s in segs)
        plain = sum(s.q.numel() * s.k.numel() for s in segs if s.mask is None)
        exact = float(((hi - lo) // dilation + 1).sum())
        return cls(length, segs, float(pairs), float(plain), exact)


def _segment_lengths(axis_len: int, dilation: int, stride: int) -> List[int]:
    group_len = -(-axis_len // dilation)
    out = {min(stride * m, group_len) for m in SEGMENT_MULTIPLES}
    return sorted(out)


@dataclass
class QueryGroup:
    """A box of query tokens, its key tokens (text keys last) and its mask factors."""

    q_index: torch.Tensor              # [nq] int64 token indices in the sequence
    kv_index: torch.Tensor             # [nk] int64 token indices (video box, then text)
    masks: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # per axis, or None
    text_keys: int                     # number of trailing text keys in kv_index


class Tiling:
    """The CPU execution plan of a static pattern on a layout (cached, see :func:`tiling_for`).

    ``pattern``: ``Full``, ``Neighborhood`` or ``SlidingTile``: anything with per-axis
    window tables ``windows(layout)`` (and a ``stride``, else 1).
    """

    def __init__(self, pattern, layout: TokenLayout):
        self.pattern = pattern
        self.layout = layout
        grid = layout.grid
        if not callable(getattr(pattern, "windows", None)):
            raise TypeError(f"Tiling is for static patterns, got {pattern!r}")
        windows = pattern.windows(layout)
        strides = getattr(pattern, "stride", (1, 1, 1))
        self.windows = windows
        stats_per_axis = []
        for (lo, hi, d), n, s in zip(windows, grid, strides):
            stats_per_axis.append([_AxisStats.of(lo, hi, d, b) for b in _segment_lengths(n, d, s)])
        self.axes: Tuple[_AxisStats, _AxisStats, _AxisStats] = self._choose(stats_per_axis)
        self.segment_lengths = tuple(a.length for a in self.axes)
        self._kernel_groups = {}

    @staticmethod
    def _cost(combo: Sequence[_AxisStats], video_len: int) -> float:
        pairs = math.prod(a.pairs for a in combo)
        plain = math.prod(a.plain_pairs for a in combo)
        calls = math.prod(len(a.segments) for a in combo)
        q_rows = video_len / calls
        return (plain + (pairs - plain) * MASK_COST) * (1.0 + SMALL_Q_ROWS / q_rows) + calls * CALL_COST_PAIRS

    def _choose(self, stats_per_axis):
        n = self.layout.video_len
        return min(itertools.product(*stats_per_axis), key=lambda combo: self._cost(combo, n))

    # --- numbers ---------------------------------------------------------------------
    def density(self, exact: bool = False) -> float:
        lay = self.layout
        video = math.prod(a.exact if exact else a.pairs for a in self.axes)
        s = lay.seq_len
        return (video + s * s - lay.video_len ** 2) / (s * s)

    @property
    def num_groups(self) -> int:
        return math.prod(len(a.segments) for a in self.axes)

    # --- groups ----------------------------------------------------------------------
    @functools.cached_property
    def groups(self) -> List[QueryGroup]:
        lay = self.layout
        _, gh, gw = lay.grid
        v0 = lay.video_start
        text = torch.arange(lay.text_start, lay.text_start + lay.text_len, dtype=torch.int64)
        out = []
        for st, sh, sw in itertools.product(*(a.segments for a in self.axes)):
            q = ((st.q[:, None, None] * gh + sh.q[None, :, None]) * gw + sw.q[None, None, :]).reshape(-1) + v0
            k = ((st.k[:, None, None] * gh + sh.k[None, :, None]) * gw + sw.k[None, None, :]).reshape(-1) + v0
            if lay.text_len:
                k = torch.cat([k, text])
            masks = None
            if st.mask is not None or sh.mask is not None or sw.mask is not None:
                masks = tuple(
                    s.mask if s.mask is not None else torch.ones(s.q.numel(), s.k.numel(), dtype=torch.bool)
                    for s in (st, sh, sw)
                )
            out.append(QueryGroup(q, k, masks, lay.text_len))
        return out


    def kernel_groups(self, dtype: torch.dtype):
        """``(q_index, kv_index, mask, text_keys)`` per group for the CPU kernel, with the
        masks pre-built as additive tensors in ``dtype`` when they fit the cache budget."""
        cached = self._kernel_groups.get(dtype)
        if cached is not None:
            return cached
        groups = self.groups
        size = sum(g.q_index.numel() * g.kv_index.numel() for g in groups if g.masks is not None)
        if size > MASK_CACHE_ELEMENTS:
            return [(g.q_index, g.kv_index, g.masks, g.text_keys) for g in groups]
        from .kernels.cpu.attention import factor_mask

        built = [(g.q_index, g.kv_index, None if g.masks is None else factor_mask(g.masks, g.text_keys, dtype),
                  g.text_keys) for g in groups]
        self._kernel_groups[dtype] = built
        return built


@functools.lru_cache(maxsize=256)
def tiling_for(pattern, layout: TokenLayout) -> Tiling:
    """The cached CPU tiling of a static pattern (``Full``, ``Neighborhood``, ``SlidingTile``)."""
    return Tiling(pattern, layout)


# --------------------------------------------------------------------------------------
# Equal 3D blocks (BlockSparse, and the Triton kernel's tiles)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockGrid:
    """A (T, H, W) grid cut into blocks of ``block`` tokens per axis, ragged at the far ends."""

    grid: Tuple[int, int, int]
    block: Tuple[int, int, int]

    @property
    def blocks_per_axis(self) -> Tuple[int, int, int]:
        return tuple(-(-n // b) for n, b in zip(self.grid, self.block))  # type: ignore[return-value]

    @property
    def num_blocks(self) -> int:
        return math.prod(self.blocks_per_axis)

    @property
    def block_tokens(self) -> int:
        return math.prod(self.block)

    def token_block(self) -> torch.Tensor:
        """``[T*H*W]`` int64: the block of every video token (natural order)."""
        t, h, w = self.grid
        bt, bh, bw = self.block
        _, nh, nw = self.blocks_per_axis
        it = torch.arange(t) // bt
        ih = torch.arange(h) // bh
        iw = torch.arange(w) // bw
        return ((it[:, None, None] * nh + ih[None, :, None]) * nw + iw[None, None, :]).reshape(-1)

    def block_sizes(self) -> torch.Tensor:
        """``[num_blocks]`` int64: valid tokens in every block."""
        return torch.bincount(self.token_block(), minlength=self.num_blocks)

    @functools.lru_cache(maxsize=None)
    def block_token_table(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, valid)``: ``[num_blocks, bt*bh*bw]`` video token indices (0 where
        padded) and the bool validity of each slot; blocks listed T-major like tokens."""
        t, h, w = self.grid
        bt, bh, bw = self.block
        nt, nh, nw = self.blocks_per_axis
        ct = torch.arange(nt)[:, None] * bt + torch.arange(bt)[None, :]  # [nt, bt]
        ch = torch.arange(nh)[:, None] * bh + torch.arange(bh)[None, :]
        cw = torch.arange(nw)[:, None] * bw + torch.arange(bw)[None, :]
        valid = ((ct < t)[:, None, None, :, None, None] & (ch < h)[None, :, None, None, :, None]
                 & (cw < w)[None, None, :, None, None, :])
        tok = ((ct[:, None, None, :, None, None] * h + ch[None, :, None, None, :, None]) * w
               + cw[None, None, :, None, None, :])
        tok = torch.where(valid, tok, torch.zeros((), dtype=torch.int64))
        shape = (nt * nh * nw, bt * bh * bw)
        return tok.reshape(shape), valid.reshape(shape)


def pool_blocks(x: torch.Tensor, layout: TokenLayout, grid: BlockGrid) -> torch.Tensor:
    """Mean of the video tokens of every block: ``[B, S, H, D]`` -> ``[B, H, nb, D]`` (fp32)."""
    v0 = layout.video_start
    video = x[:, v0:v0 + layout.video_len].float()
    b, n, h, d = video.shape
    tok2blk = grid.token_block().to(x.device)
    sums = torch.zeros(b, grid.num_blocks, h, d, device=x.device, dtype=torch.float32)
    sums.index_add_(1, tok2blk, video)
    sizes = grid.block_sizes().to(x.device, torch.float32)
    return (sums / sizes[None, :, None, None]).permute(0, 2, 1, 3)


def block_sparse_select(pattern, layout: TokenLayout, grid: BlockGrid,
                        q: torch.Tensor, k: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """The key blocks every query block of a ``BlockSparse`` pattern keeps: ``[B, H, nb, nb]`` bool.

    Scores are ``mean(q_block) . mean(k_block) * scale`` in fp32. With ``topk``, the
    ``ceil(topk * nb)`` highest; with ``threshold``, the fewest whose softmax mass reaches it,
    where each block's mass is weighted by its token count (a ragged edge block carries less).
    The diagonal (own) block is always kept.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    pq = pool_blocks(q, layout, grid)
    pk = pool_blocks(k, layout, grid)
    scores = pq @ pk.transpose(-1, -2) * scale  # [B, H, nb, nb]
    nb = grid.num_blocks
    eye = torch.eye(nb, dtype=torch.bool, device=q.device)
    if pattern.topk is not None:
        keep_n = min(nb, max(1, math.ceil(pattern.topk * nb)))
        if keep_n >= nb:
            return torch.ones(*scores.shape, dtype=torch.bool, device=q.device)
        forced = scores.masked_fill(eye, float("inf"))
        idx = forced.topk(keep_n, dim=-1).indices
        sel = torch.zeros_like(scores, dtype=torch.bool)
        return sel.scatter_(-1, idx, True)
    if pattern.threshold >= 1.0:
        return torch.ones(*scores.shape, dtype=torch.bool, device=q.device)
    logw = grid.block_sizes().to(q.device, torch.float32).log()
    mass = torch.softmax(scores + logw, dim=-1)
    order = (mass + 2.0 * eye).argsort(dim=-1, descending=True)  # own block first
    sorted_mass = mass.gather(-1, order)
    before = sorted_mass.cumsum(-1) - sorted_mass
    keep_sorted = before < pattern.threshold
    sel = torch.zeros_like(keep_sorted)
    return sel.scatter_(-1, order, keep_sorted)
