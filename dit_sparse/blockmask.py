"""The one sparse-layout type the Triton kernel walks: a block mask over 3D token blocks.

Modelled on FlexAttention's ``BlockMask``. The video grid is cut into equal 3D blocks
(``q_block`` for queries, ``kv_block`` for keys; ragged at the far ends of each axis), listed
T-major like the tokens. For every query block (and, after them, every block of
``q_tokens`` text queries) the mask lists

* ``full_kv_num_blocks`` / ``full_kv_indices``: key blocks in which every (valid) query sees
  every key - the kernel runs them without any mask;
* ``kv_num_blocks`` / ``kv_indices``: partly kept key blocks (a window edge, a ragged block
  at the end of an axis): the kernel computes their token mask from token coordinates, using
  the per-axis window tables (neighborhoods) or the block selection (block-sparse) - never an
  ``S x S`` tensor.

Tables have a leading ``Z`` dimension: 1 for static patterns, ``B * heads`` for
data-dependent ones. Text keys are not listed: they are global and the kernel appends them.

A pattern with a far field (:mod:`dit_sparse.farfield`) also gets :class:`FarBlocks`: per
query block, the pooled key boxes its rows see, split like the key blocks into boxes every
row sees (no check) and boxes only some rows see (a query block can span several pool
boxes), listed with the query box that sees them so that each row only compares box ids.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .layout import TokenLayout
from .patterns import BlockSparse, Full, Neighborhood, Pattern
from .tiling import BlockGrid, axis_mask, block_sparse_select

Triple = Tuple[int, int, int]


@dataclass
class FarBlocks:
    """The far field of a static pattern, per query block of the kernel.

    Pool boxes are numbered T-major over ``boxes_per_axis`` (those of
    :class:`~dit_sparse.farfield.FarFieldTables`), and so are the query boxes (the same
    boxes). For query block ``i`` the kernel walks

    * ``full_far_indices[0, i, :full_far_num_boxes[0, i]]``: boxes that no row of the block
      is near - every row sees their pooled key, no check;
    * ``far_indices[0, i, :far_num_boxes[0, i]]`` with ``far_query_boxes`` beside it: pairs
      (far box, query box) for the boxes that some rows of the block see and others do not
      (a block can span several query boxes), one pair per query box that sees the far box;
      a row keeps a pair iff its own box (from its coordinates) is the pair's query box.

    Pairs keep the per-row check to an integer compare (no gathered table in the kernel);
    a box that k of the block's query boxes see (and not all) is listed k times. Text query
    blocks list nothing (text queries attend every key exactly). Shapes as in
    :class:`BlockMask` (``Z = 1``).
    """

    pool: Triple
    boxes_per_axis: Triple
    full_far_num_boxes: torch.Tensor
    full_far_indices: torch.Tensor
    far_num_boxes: torch.Tensor
    far_indices: torch.Tensor
    far_query_boxes: torch.Tensor

    @property
    def num_boxes(self) -> int:
        return math.prod(self.boxes_per_axis)

    def to(self, device) -> "FarBlocks":
        moved = {name: getattr(self, name).to(device) for name in
                 ("full_far_num_boxes", "full_far_indices", "far_num_boxes", "far_indices", "far_query_boxes")}
        return FarBlocks(**{**self.__dict__, **moved})


@dataclass
class BlockMask:
    """Block-level sparsity of one attention call (see the module docstring).

    Shapes: ``kv_num_blocks``/``full_kv_num_blocks`` ``[Z, NQ]`` int32,
    ``kv_indices``/``full_kv_indices`` ``[Z, NQ, max(1, widest row)]`` int32, where
    ``NQ = video query blocks + text query blocks``.
    """

    layout: TokenLayout
    q_block: Triple
    kv_block: Triple
    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    full_kv_num_blocks: torch.Tensor
    full_kv_indices: torch.Tensor
    num_video_q_blocks: int
    num_kv_blocks: int
    # Token-mask sources for partial blocks:
    windows: Optional[Tuple[torch.Tensor, ...]] = None    # lo_t, hi_t, lo_h, hi_h, lo_w, hi_w int32
    dilation: Triple = (1, 1, 1)
    selection: Optional[torch.Tensor] = None               # [Z, nb, nb] bool (block-sparse)
    selection_block: Triple = (1, 1, 1)
    far: Optional[FarBlocks] = None                        # pooled key boxes (far-field patterns)

    @property
    def q_tokens(self) -> int:
        return math.prod(self.q_block)

    @property
    def kv_tokens(self) -> int:
        return math.prod(self.kv_block)

    def to_dense(self) -> torch.Tensor:
        """``[Z, NQ, NK]`` int8: 0 skipped, 1 partly kept, 2 fully kept."""
        z, nq = self.kv_num_blocks.shape
        dense = torch.zeros(z, nq, self.num_kv_blocks, dtype=torch.int8)
        for value, num, idx in ((1, self.kv_num_blocks, self.kv_indices),
                                (2, self.full_kv_num_blocks, self.full_kv_indices)):
            cols = torch.arange(idx.shape[-1])
            keep = cols[None, None, :] < num[..., None].long()
            zi, qi, ci = keep.nonzero(as_tuple=True)
            dense[zi, qi, idx[zi, qi, ci].long()] = value
        return dense

    def sparsity(self) -> float:
        """Fraction of (video query block, key block) tiles skipped, in percent-free units."""
        dense = self.to_dense()[:, : self.num_video_q_blocks]
        return float((dense == 0).float().mean())

    def __str__(self) -> str:
        dense = self.to_dense()[0]
        chars = {0: ".", 1: "+", 2: "#"}
        rows = ["".join(chars[int(x)] for x in row[:96]) for row in dense[:48]]
        head = (f"BlockMask(grid={self.layout.grid}, q_block={self.q_block}, kv_block={self.kv_block}, "
                f"Z={self.kv_num_blocks.shape[0]}, sparsity={self.sparsity():.3f}) '#' full, '+' partial")
        if self.far is not None:
            f = self.far
            seen = (f.full_far_num_boxes + f.far_num_boxes)[0, : self.num_video_q_blocks].float()
            head += (f"\nfar field: pool={f.pool}, {f.num_boxes} boxes, {float(seen.mean()):.1f} pooled-key "
                     f"columns per query block ({float(f.far_num_boxes.sum() / seen.sum().clamp_min(1)):.0%} "
                     "checked per row)")
        return "\n".join([head] + rows)

    def to(self, device) -> "BlockMask":
        moved = {}
        for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "selection"):
            t = getattr(self, name)
            moved[name] = None if t is None else t.to(device)
        windows = None if self.windows is None else tuple(t.to(device) for t in self.windows)
        far = None if self.far is None else self.far.to(device)
        return BlockMask(**{**self.__dict__, **moved, "windows": windows, "far": far})


def _axis_block_relation(m: torch.Tensor, bq: int, bk: int):
    """Per-axis ``(any, full)`` of ``[nq_blocks, nk_blocks]`` from a ``[L, L]`` token mask."""
    n = m.shape[0]
    nq, nk = -(-n // bq), -(-n // bk)
    pad = torch.zeros(nq * bq, nk * bk, dtype=torch.bool)
    pad[:n, :n] = m
    qvalid = torch.arange(nq * bq) < n
    # Padded query rows never veto "full"; a padded key slot makes its block partial.
    filled = pad | ~qvalid[:, None]
    blocks_any = pad.reshape(nq, bq, nk, bk).any(3).any(1)
    blocks_all = filled.reshape(nq, bq, nk, bk).all(3).all(1)
    key_whole = (torch.arange(nk) + 1) * bk <= n
    return blocks_any, blocks_all & key_whole[None, :]


def _outer3(a, b, c):
    return (a[:, None, None, :, None, None] & b[None, :, None, None, :, None]
            & c[None, None, :, None, None, :]).reshape(a.shape[0] * b.shape[0] * c.shape[0], -1)


def _tables(any_rel: torch.Tensor, full_rel: torch.Tensor):
    """LUTs from ``[Z, NQ, NK]`` bool relations: (num, idx) for partial and full blocks."""
    partial = any_rel & ~full_rel

    def lut(rel):
        num = rel.sum(-1).to(torch.int32)
        width = max(1, int(num.max()) if num.numel() else 1)
        # Stable descending sort of the bools puts kept indices first, in increasing order.
        order = torch.sort(rel.to(torch.int8), dim=-1, descending=True, stable=True).indices
        return num, order[..., :width].to(torch.int32).contiguous()

    return (*lut(partial), *lut(full_rel))


def _with_text_rows(any_rel, full_rel, layout: TokenLayout, q_tokens: int, kv_whole: torch.Tensor):
    """Append the text query blocks: they see every key block (whole ones fully)."""
    n_text_blocks = -(-layout.text_len // q_tokens) if layout.text_len else 0
    if not n_text_blocks:
        return any_rel, full_rel
    z, _, nk = any_rel.shape
    t_any = torch.ones(z, n_text_blocks, nk, dtype=torch.bool)
    t_full = kv_whole[None, None, :].expand(z, n_text_blocks, nk)
    return torch.cat([any_rel, t_any], 1), torch.cat([full_rel, t_full], 1)


def _whole_blocks(grid: Triple, block: Triple) -> torch.Tensor:
    """``[nb]`` bool: blocks with no padded slot."""
    ax = [(torch.arange(-(-n // b)) + 1) * b <= n for n, b in zip(grid, block)]
    return _outer3(*[a[:, None] for a in ax]).reshape(-1)


def _padded_rows(row: torch.Tensor, values: Tuple[torch.Tensor, ...], n_rows: int):
    """Lists from entries sorted by ``row``: ``[1, n_rows]`` counts and one
    ``[1, n_rows, max(1, widest)]`` int32 table per tensor of ``values`` (0-padded)."""
    num = torch.bincount(row, minlength=n_rows)
    width = max(1, int(num.max()) if num.numel() else 1)
    col = torch.arange(row.numel()) - (torch.cumsum(num, 0) - num)[row]
    tables = []
    for value in values:
        table = torch.zeros(n_rows, width, dtype=torch.int32)
        table[row, col] = value.to(torch.int32)
        tables.append(table[None])
    return num.to(torch.int32)[None], tables


def far_blocks(pattern: Pattern, layout: TokenLayout, q_block: Triple) -> FarBlocks:
    """:class:`FarBlocks` of a far-field pattern for the kernel's query blocks."""
    from .farfield import far_field_for

    tables = far_field_for(pattern, layout)
    nb = tables.num_boxes
    q_grid = BlockGrid(layout.grid, q_block)
    nvq = q_grid.num_blocks
    n_q = nvq + (-(-layout.text_len // math.prod(q_block)) if layout.text_len else 0)
    # (query block, query box) pairs that hold a video token, sorted by block then box.
    pairs = torch.unique(q_grid.token_block() * nb + tables.token_box)
    pair_block, pair_box = pairs // nb, pairs % nb
    near = tables.near[pair_box]                                            # [pairs, nb]
    # A row of block i sees box f unless its own box is near f: all rows see f iff no pair
    # of block i is near f; the others seen by some rows go to the checked list, per pair.
    some_near = torch.zeros(nvq, nb, dtype=torch.int32).index_add_(0, pair_block, near.to(torch.int32)) > 0
    full_block, full_box = (~some_near).nonzero(as_tuple=True)
    fnum, (fidx,) = _padded_rows(full_block, (full_box,), n_q)
    pair, far_box = (~near & some_near[pair_block]).nonzero(as_tuple=True)
    num, (idx, qbox) = _padded_rows(pair_block[pair], (far_box, pair_box[pair]), n_q)
    return FarBlocks(tables.boxes.block, tables.boxes.blocks_per_axis, fnum, fidx, num, idx, qbox)


@functools.lru_cache(maxsize=256)
def static_block_mask(pattern: Pattern, layout: TokenLayout, q_block: Triple, kv_block: Triple) -> BlockMask:
    """Block mask of a static pattern (``Full``, ``Neighborhood``, ``SlidingTile``), cached;
    with its :class:`FarBlocks` when the pattern has a far field."""
    grid = layout.grid
    if not isinstance(pattern, (Full, Neighborhood)):
        raise TypeError(f"static_block_mask needs a static pattern, got {pattern!r}")
    windows = pattern.exact_part().windows(layout)
    rels = [_axis_block_relation(axis_mask(lo, hi, d), bq, bk)
            for (lo, hi, d), bq, bk in zip(windows, q_block, kv_block)]
    any_rel = _outer3(*[r[0] for r in rels])[None]
    full_rel = _outer3(*[r[1] for r in rels])[None]
    nvq = any_rel.shape[1]
    any_rel, full_rel = _with_text_rows(any_rel, full_rel, layout, math.prod(q_block),
                                        _whole_blocks(grid, kv_block))
    num, idx, fnum, fidx = _tables(any_rel, full_rel)
    tables = tuple(t.to(torch.int32) for lo, hi, _ in windows for t in (lo, hi))
    far = far_blocks(pattern, layout, q_block) if pattern.far is not None else None
    return BlockMask(layout, q_block, kv_block, num, idx, fnum, fidx, nvq, any_rel.shape[-1],
                     windows=tables, dilation=tuple(d for _, _, d in windows), far=far)


def _overlap(grid: Triple, kernel_block: Triple, pattern_block: Triple) -> torch.Tensor:
    """``[n_kernel_blocks, n_pattern_blocks]`` float: 1 where the two blocks share a token."""
    mats = []
    for n, kb, pb in zip(grid, kernel_block, pattern_block):
        c = torch.arange(n)
        o = torch.zeros(-(-n // kb), -(-n // pb))
        o[c // kb, c // pb] = 1.0
        mats.append(o > 0)
    return _outer3(*mats).float()


def block_sparse_block_mask(pattern: BlockSparse, layout: TokenLayout, q: torch.Tensor, k: torch.Tensor,
                            q_block: Triple, kv_block: Triple, scale: Optional[float] = None) -> BlockMask:
    """Block mask of a :class:`BlockSparse` selection for the kernel's own block shapes."""
    pgrid = BlockGrid(layout.grid, pattern.block)
    sel = block_sparse_select(pattern, layout, pgrid, q, k, scale).cpu()  # [B, H, nb, nb]
    b, h, nb, _ = sel.shape
    sel = sel.reshape(b * h, nb, nb)
    oq = _overlap(layout.grid, q_block, pattern.block)   # [nqk, nb]
    ok = _overlap(layout.grid, kv_block, pattern.block)  # [nkk, nb]
    selected = sel.float()
    any_rel = (oq @ selected @ ok.T) > 0
    full_rel = ((oq @ (1.0 - selected) @ ok.T) == 0) & _whole_blocks(layout.grid, kv_block)[None, None, :]
    full_rel &= any_rel
    nvq = any_rel.shape[1]
    any_rel, full_rel = _with_text_rows(any_rel, full_rel, layout, math.prod(q_block),
                                        _whole_blocks(layout.grid, kv_block))
    num, idx, fnum, fidx = _tables(any_rel, full_rel)
    return BlockMask(layout, q_block, kv_block, num, idx, fnum, fidx, nvq, any_rel.shape[-1],
                     selection=sel, selection_block=pattern.block)


def block_sparse_far_blocks(pattern: BlockSparse, layout: TokenLayout, selection: torch.Tensor,
                            q_block: Triple) -> Tuple[FarBlocks, torch.Tensor]:
    """The far field of a block-sparse pattern for the kernel's query blocks, per (batch, head).

    ``selection``: the ``[Z, n_sel, n_sel]`` block selection (``Z = B * H``) of the pattern's
    blocks. A pool box is near a pattern block when it overlaps one of the block's selected
    key blocks (:meth:`~dit_sparse.farfield.BlockFarTables.near`). Returns ``(far, near)``:
    :class:`FarBlocks` with ``Z = B * H`` rows whose pairs name pattern blocks as query boxes
    (a kernel block spanning several pattern blocks lists a box that only some of them see
    once per pattern block that sees it; a block inside one pattern block lists every box as
    seen by all its rows), and ``near``: ``[Z, n_sel, nb]`` bool (the sinks' check).
    """
    from .farfield import block_far_for

    tables = block_far_for(pattern, layout)
    near = tables.near(selection.cpu())  # [Z, n_sel, nb]
    z, _, nb = near.shape
    q_grid = BlockGrid(layout.grid, q_block)
    nvq = q_grid.num_blocks
    n_q = nvq + (-(-layout.text_len // math.prod(q_block)) if layout.text_len else 0)
    covers = _overlap(layout.grid, q_block, pattern.block) > 0  # [nvq, n_sel]
    some_near = (covers.float() @ near.float()) > 0             # [Z, nvq, nb]
    zi, qi, box = (~some_near).nonzero(as_tuple=True)
    fnum, (fidx,) = _padded_rows(zi * n_q + qi, (box,), z * n_q)
    pair_q, pair_p = covers.nonzero(as_tuple=True)              # sorted by kernel block
    if bool((covers.sum(1) > 1).any()):
        seen = ~near[:, pair_p] & some_near[:, pair_q]          # [Z, pairs, nb]
        zp, pair, far_box = seen.nonzero(as_tuple=True)
        num, (idx, qbox) = _padded_rows(zp * n_q + pair_q[pair], (far_box, pair_p[pair]), z * n_q)
    else:  # every kernel block lies in one pattern block: no per-row check
        num, (idx, qbox) = _padded_rows(torch.zeros(0, dtype=torch.int64), (torch.zeros(0), torch.zeros(0)), z * n_q)
    far = FarBlocks(tables.boxes.block, tables.boxes.blocks_per_axis, fnum.view(z, n_q), fidx.view(z, n_q, -1),
                    num.view(z, n_q), idx.view(z, n_q, -1), qbox.view(z, n_q, -1))
    return far, near
