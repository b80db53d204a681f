"""The far field of a pattern, lowered to tables: which pooled key boxes each query sees.

Semantics (:class:`~dit_sparse.patterns.FarField`): the video grid is cut into boxes of
``pool`` tokens per axis (ragged at the far ends, clamped to the grid). A query box ``Qb`` and
a key box ``Kb`` are *near* when the pattern's exact mask holds at least one pair
``(q in Qb, k in Kb)``. Every video query of ``Qb`` sees, besides its exact keys, one pooled
key per box that is not near ``Qb``: the mean of the box's keys and values (over the keys
the key mask keeps), with the logit bias ``log(count)``. Text queries attend to every key
exactly, as without a far field.

Sinks (``FarField.sinks = N``): per batch and head, the N video keys (of those the key mask
keeps) with the highest score ``mean(video q) . k`` (ties to the lower token) are taken out
of their boxes' means and counts, and every video query whose box is not near a sink's box
sees that sink as an exact key. A box left without keys contributes nothing.

Block-sparse patterns (``BlockSparse(..., far=...)``) choose their key blocks per batch, head
and query block from the data, so "near" is per (batch, head, query block): a box is near the
query block when it overlaps one of the block's selected key blocks (with ``pool`` equal to
``block``, exactly the selected blocks). Every video query of the block sees one pooled key per
other box, as above: the non-selected blocks become coarse keys instead of being pruned, the
interpolation between keeping and pruning of Pyramid Sparse Attention (Li et al., 2025).
Sinks follow the same rule (a query sees a sink whose box is not near its block).

Because a neighborhood's mask is the AND of three per-axis masks, "some pair of ``Qb x Kb``
is attended" is the AND of the same question per axis: the near table of the whole grid
comes from three small per-axis tables, never from an ``S x S`` mask.

Everything is cached per (pattern, layout). The pattern is asked for its ``far`` field and
the window tables of its exact part (``exact_part().windows(layout)``); no pattern class is
imported, so that ``patterns.py`` can count pooled keys in its densities.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .layout import TokenLayout
from .tiling import BlockGrid, axis_mask


def _axis_near(lo: torch.Tensor, hi: torch.Tensor, dilation: int, pool: int) -> torch.Tensor:
    """``[nboxes, nboxes]`` bool of one axis: some query of box ``i`` attends a key of box ``j``."""
    m = axis_mask(lo, hi, dilation).double()
    box = torch.arange(lo.numel()) // pool
    n = int(box.max()) + 1
    rows = torch.zeros(n, m.shape[1], dtype=torch.float64).index_add_(0, box, m)
    return torch.zeros(n, n, dtype=torch.float64).index_add_(1, box, rows) > 0


@dataclass
class FarFieldTables:
    """The far field of one pattern on one layout."""

    boxes: BlockGrid           # pool boxes over the video grid
    near: torch.Tensor         # [nb, nb] bool, query box x key box
    token_box: torch.Tensor    # [T*H*W] int64: box of every video token
    box_sizes: torch.Tensor    # [nb] int64

    @property
    def num_boxes(self) -> int:
        return self.boxes.num_blocks

    def pooled_pairs(self) -> float:
        """Query-pooled-key pairs over all video queries (a pooled key counts as one key)."""
        far_per_box = (~self.near).sum(1).double()
        return float((self.box_sizes.double() * far_per_box).sum())

    def token_far(self) -> torch.Tensor:
        """``[T*H*W, nb]`` bool: the boxes each video query sees pooled (for the reference)."""
        return ~self.near[self.token_box]


@functools.lru_cache(maxsize=128)
def far_field_for(pattern, layout: TokenLayout) -> FarFieldTables:
    """The cached far-field tables of ``pattern`` (a neighborhood or sliding tile, which
    must have a ``far``) on ``layout``."""
    far = pattern.far
    if far is None:
        raise ValueError(f"pattern {pattern.spec!r} has no far field")
    if not callable(getattr(pattern, "windows", None)):
        raise TypeError(f"far fields are defined for neighborhood and sliding-tile patterns, got {pattern.spec!r}")
    pool = tuple(min(p, n) for p, n in zip(far.pool, layout.grid))
    boxes = BlockGrid(layout.grid, pool)
    per_axis = axis_near_tables(pattern, layout)
    nt, nh, nw = (a.shape[0] for a in per_axis)
    at, ah, aw = per_axis
    near = (at[:, None, None, :, None, None] & ah[None, :, None, None, :, None]
            & aw[None, None, :, None, None, :]).reshape(nt * nh * nw, nt * nh * nw)
    return FarFieldTables(boxes, near, boxes.token_block(), boxes.block_sizes())


@dataclass
class BlockFarTables:
    """The static part of a block-sparse pattern's far field on one layout."""

    boxes: BlockGrid           # pool boxes over the video grid
    overlap: torch.Tensor      # [n_blocks, nb] bool: key block x pool box it shares tokens with
    token_box: torch.Tensor    # [T*H*W] int64: box of every video token
    token_block: torch.Tensor  # [T*H*W] int64: block of every video token
    box_sizes: torch.Tensor    # [nb] int64

    @property
    def num_boxes(self) -> int:
        return self.boxes.num_blocks

    def near(self, selection: torch.Tensor) -> torch.Tensor:
        """``[B, H, n_blocks, nb]`` bool from a ``[B, H, n_blocks, n_blocks]`` block selection:
        the boxes each query block holds exact keys in."""
        hits = selection.to(torch.float32) @ self.overlap.to(torch.float32)
        return hits > 0

    def pooled_pairs(self, selection: torch.Tensor) -> torch.Tensor:
        """``[B, H]`` float64: query-pooled-key pairs over all video queries under a block
        ``selection`` (a pooled key counts as one key)."""
        block_sizes = torch.bincount(self.token_block).double()
        return (block_sizes[:, None] * (~self.near(selection)).double()).sum((-1, -2))


@functools.lru_cache(maxsize=64)
def block_far_tables(layout: TokenLayout, block: Tuple[int, int, int], pool: Tuple[int, int, int]) -> BlockFarTables:
    """The cached far-field tables of a block-sparse pattern with blocks ``block`` and pool
    boxes ``pool`` (clamped to the grid) on ``layout``."""
    pool = tuple(min(p, n) for p, n in zip(pool, layout.grid))
    blocks, boxes = BlockGrid(layout.grid, block), BlockGrid(layout.grid, pool)
    token_block, token_box = blocks.token_block(), boxes.token_block()
    overlap = torch.zeros(blocks.num_blocks, boxes.num_blocks, dtype=torch.bool)
    overlap[token_block, token_box] = True
    return BlockFarTables(boxes, overlap, token_box, token_block, boxes.block_sizes())


def is_block_sparse(pattern) -> bool:
    """Whether ``pattern``'s exact part is chosen from the data (it has ``block`` and ``topk``)."""
    return hasattr(pattern, "block") and hasattr(pattern, "topk")


def block_far_for(pattern, layout: TokenLayout) -> BlockFarTables:
    return block_far_tables(layout, pattern.block, pattern.far.pool)


def pattern_sinks(q: torch.Tensor, k: torch.Tensor, pattern, layout: TokenLayout, key_mask=None):
    """:func:`select_sinks`' ``(idx, valid)`` for ``pattern``'s far field, or None without sinks."""
    n = pattern.far.sinks
    return select_sinks(q, k, layout, n, key_mask) if n else None


def sink_keys(k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, idx: torch.Tensor):
    """The keys and values ``[B, H, N, D]`` of the sinks ``idx`` (``[B, H, N]`` video token
    indices, as :func:`select_sinks` gives them)."""
    rows = (idx + layout.video_start)[..., None].expand(-1, -1, -1, k.shape[-1])
    return k.transpose(1, 2).gather(2, rows), v.transpose(1, 2).gather(2, rows)


def block_far_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern, layout: TokenLayout,
                   selection: torch.Tensor, key_mask=None):
    """The extra keys of a block-sparse far field for the CPU kernel: ``(ke, ve, bias)`` as
    :func:`extra_keys` gives them, one class per query block, and the ``[T*H*W]`` class
    (block) of every video token."""
    tables = block_far_for(pattern, layout)
    return (*extra_keys(q, k, v, pattern, layout, tables, tables.near(selection), key_mask), tables.token_block)


def window_far_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern, layout: TokenLayout, key_mask=None):
    """The extra keys of a neighborhood or sliding-tile far field for the CPU kernel:
    ``(ke, ve, bias)`` as :func:`extra_keys` gives them, one class per query box, and the
    ``[T*H*W]`` class (box) of every video token."""
    tables = far_field_for(pattern, layout)
    return (*extra_keys(q, k, v, pattern, layout, tables, tables.near[None, None], key_mask), tables.token_box)


def sinks_near(tables, near: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``[B, H, n_classes, N]`` bool: whether the box of each sink (``idx``: ``[B, H, N]``
    video token indices) is near each query class (``near``: ``[B or 1, H or 1, n_classes,
    nb]`` bool), on ``near``'s device. A class sees a sink only where it is not."""
    b, h, _ = idx.shape
    sink_box = tables.token_box.to(near.device)[idx.to(near.device)]  # [B, H, N]
    return near.expand(b, h, -1, -1).gather(3, sink_box[:, :, None, :].expand(-1, -1, near.shape[2], -1))


def extra_keys(q, k, v, pattern, layout: TokenLayout, tables, near: torch.Tensor, key_mask=None):
    """A far field's keys beside the exact ones: ``ke, ve``: ``[B, H, n_extra, D]`` (the
    pooled key of every box, then the sinks) and ``bias``: ``[B or 1, H or 1, n_classes,
    n_extra]`` float32 additive per query class (``log(count)`` for a box the class sees
    pooled, 0 for a sink it sees, ``-inf`` otherwise), where ``near`` (``[B or 1, H or 1,
    n_classes, nb]`` bool) says which boxes each class holds exact keys in."""
    chosen = pattern_sinks(q, k, pattern, layout, key_mask)
    kp, vp, log_count = pooled_keys(k, v, layout, tables, key_mask, chosen)
    log_count = log_count[:, None, None, :] if log_count.dim() == 2 else log_count[:, :, None, :]
    bias = log_count.masked_fill(near, float("-inf"))
    ke, ve = kp.transpose(1, 2), vp.transpose(1, 2)
    if chosen is not None:
        idx, valid = chosen
        ks, vs = sink_keys(k, v, layout, idx)
        seen = ~sinks_near(tables, near, idx) & valid[:, :, None, :]
        sink_bias = torch.zeros(seen.shape, dtype=torch.float32, device=q.device).masked_fill_(~seen, float("-inf"))
        bias = torch.cat([bias.expand(*idx.shape[:2], -1, -1), sink_bias], 3)
        ke, ve = torch.cat([ke, ks], 2), torch.cat([ve, vs], 2)
    return ke.contiguous(), ve.contiguous(), bias


@functools.lru_cache(maxsize=128)
def axis_near_tables(pattern, layout: TokenLayout) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three per-axis near tables ``[nboxes_a, nboxes_a]`` bool (query box x key box)
    whose AND is :attr:`FarFieldTables.near`."""
    pool = tuple(min(p, n) for p, n in zip(pattern.far.pool, layout.grid))
    return tuple(_axis_near(lo, hi, d, p) for (lo, hi, d), p in zip(pattern.exact_part().windows(layout), pool))


def sink_ranges_exact(pattern) -> bool:
    """Whether :func:`near_box_ranges` holds for ``pattern`` on every layout: on each axis the
    dilation is 1 or at most the pool. Windows are intervals that move monotonically with the
    query, so the keys a box's queries attend are one interval, and with a dilation ``d`` one
    interval with gaps of at most ``d - 1``, which no box of ``pool >= d`` tokens falls in."""
    return all(d == 1 or d <= p for d, p in zip(pattern.exact_part().dilation, pattern.far.pool))


@functools.lru_cache(maxsize=128)
def near_box_ranges(pattern, layout: TokenLayout) -> Tuple[Tuple[torch.Tensor, torch.Tensor], ...]:
    """Per axis ``(lo, hi)``: int64 ``[nboxes_a]``, the key boxes near each query box of the
    axis are ``lo..hi`` (inclusive), so that the near relation of two boxes is three range
    tests (how the Triton kernel checks sinks). Raises ValueError where an axis' near boxes
    are not one range (a dilation larger than the pool: :func:`sink_ranges_exact`)."""
    out = []
    for axis, table in zip("THW", axis_near_tables(pattern, layout)):
        cols = torch.arange(table.shape[1])
        lo = torch.where(table, cols, table.shape[1]).min(1).values
        hi = torch.where(table, cols, -1).max(1).values
        if not bool((table.sum(1) == hi - lo + 1).all()):
            raise ValueError(f"the near boxes of axis {axis} are not one range for pattern {pattern.spec!r} on "
                             f"grid={layout.grid} (a dilation larger than the pool); allowed: dilation 1 or <= pool")
        out.append((lo, hi))
    return tuple(out)


def select_sinks(q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, n: int,
                 key_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(idx, valid)``: ``[B, H, n]`` video token indices of the sinks of every batch and
    head (highest ``mean(video q) . k`` first, ties to the lower token) and whether each is a
    kept key (False only where the key mask keeps fewer than ``n`` video keys)."""
    v0, nv = layout.video_start, layout.video_len
    n = min(n, nv)
    qm = q[:, v0:v0 + nv].float().mean(1)  # [B, H, D]
    score = torch.einsum("bhd,bshd->bhs", qm, k[:, v0:v0 + nv].float())
    if key_mask is not None:
        score = score.masked_fill(~key_mask[:, None, v0:v0 + nv], float("-inf"))
    if n < nv:
        # top n+1 (far cheaper than sorting every key): where the n-th value is strictly
        # above the next, the top n are that set, ordered by value, ties to the lower token
        top = score.topk(n + 1, dim=-1)
        if bool((top.values[..., n - 1] > top.values[..., n]).all()):
            idx = top.indices[..., :n].sort(dim=-1).values
            values = score.gather(-1, idx)
            order = values.sort(dim=-1, descending=True, stable=True).indices
            idx, values = idx.gather(-1, order), values.gather(-1, order)
            return idx, values > float("-inf")
    order = torch.sort(score, dim=-1, descending=True, stable=True)
    return order.indices[..., :n], order.values[..., :n] > float("-inf")


def pooled_keys(k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, tables: FarFieldTables,
                key_mask: Optional[torch.Tensor] = None, sinks: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
    """Mean key and value of every box and the log of its (kept) token count.

    ``k, v``: ``[B, S, H, D]``; ``sinks``: :func:`select_sinks`' ``(idx, valid)``, taken out
    of their boxes. Returns ``(kp, vp, log_count)``: ``[B, nb, H, D]`` in k's dtype (summed in
    float32) and ``[B, nb]`` float32, or ``[B, H, nb]`` with sinks (``-inf`` for a box left
    without keys).
    """
    v0, n = layout.video_start, layout.video_len
    b, _, h, d = k.shape
    nb = tables.num_boxes
    box = tables.token_box.to(k.device)
    keep = None if key_mask is None else key_mask[:, v0:v0 + n].float()
    if keep is None:
        counts = tables.box_sizes.to(k.device, torch.float32).expand(b, nb)
    else:
        counts = torch.zeros(b, nb, device=k.device).index_add_(1, box, keep)
    if sinks is not None:
        idx, valid = sinks  # [B, H, N]
        heads = torch.arange(h, device=k.device)[None, :, None]
        batch = torch.arange(b, device=k.device)[:, None, None]
        sink_box = box[idx]
        taken = torch.zeros(b, h, nb, device=k.device).index_put_((batch.expand_as(idx), heads.expand_as(idx),
                                                                   sink_box), valid.float(), accumulate=True)
        counts = counts[:, None, :] - taken  # [B, H, nb]
        flat = ((batch * nb + sink_box) * h + heads).reshape(-1)  # rows of a [B * nb * H, D] view

    def mean(x):  # [B, n, H, D] video tokens -> [B, nb, H, D] box means, summed in float32
        x = x[:, v0:v0 + n].float()
        if keep is not None:
            x = x * keep[:, :, None, None]
        sums = torch.zeros(b, nb, h, d, device=k.device, dtype=torch.float32).index_add_(1, box, x)
        if sinks is not None:
            picked = x.gather(1, idx.transpose(1, 2)[..., None].expand(b, -1, h, d))  # [B, N, H, D]
            picked = picked.transpose(1, 2) * valid[..., None].float()  # [B, H, N, D]
            sums.view(-1, d).index_add_(0, flat, -picked.reshape(-1, d))
            return (sums / counts.transpose(1, 2).clamp_min(1.0)[..., None]).to(k.dtype)
        return (sums / counts.clamp_min(1.0)[:, :, None, None]).to(k.dtype)

    return mean(k), mean(v), counts.log()


def reference_far_attention(q, k, v, pattern, layout: TokenLayout, key_mask, scale: float):
    """The float64 definition of attention with a far field (``[B, S, H, D]`` in and out;
    builds ``S x S``: for tests only)."""
    block = is_block_sparse(pattern)
    tables = block_far_for(pattern, layout) if block else far_field_for(pattern, layout)
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    b, h, s, _ = qd.shape
    mask = pattern.exact_part().mask(layout, q, k).to(q.device)
    mask = mask.view((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :]
    v0, nv = layout.video_start, layout.video_len
    sinks = pattern_sinks(q, k, pattern, layout, key_mask)
    kp, vp, log_count = pooled_keys(k.double(), v.double(), layout, tables, key_mask, sinks)
    kp, vp = kp.transpose(1, 2), vp.transpose(1, 2)  # [B, H, nb, D]
    log_count = log_count.double().view(b, -1, 1, tables.num_boxes)  # [B, 1 or H, 1, nb]
    if block:  # near per (batch, head, query block), from the same selection as the exact mask
        from .tiling import block_sparse_select

        selection = block_sparse_select(pattern.exact_part(), layout, BlockGrid(layout.grid, pattern.block), q, k)
        video_far = ~tables.near(selection).to(q.device)[:, :, tables.token_block.to(q.device)]  # [B, H, nv, nb]
    else:
        video_far = tables.token_far().to(q.device)[None, None]
    far = torch.zeros(*video_far.shape[:2], s, tables.num_boxes, dtype=torch.bool, device=q.device)
    far[:, :, v0:v0 + nv] = video_far
    exact = (qd @ kd.transpose(-1, -2) * scale).masked_fill(~mask, -math.inf)
    pooled = (qd @ kp.transpose(-1, -2) * scale + log_count).masked_fill(~far, -math.inf)
    logits, values = [exact, pooled], [vd, vp]
    if sinks is not None:
        idx, valid = sinks
        gather = idx[..., None].expand(-1, -1, -1, kd.shape[-1]) + v0
        ks, vs = kd.gather(2, gather), vd.gather(2, gather)  # [B, H, N, D]
        box = tables.token_box.to(q.device)[idx]  # [B, H, N]
        seen = far.expand(b, h, s, -1).gather(3, box[:, :, None, :].expand(-1, -1, s, -1))  # [B, H, S, N]
        logits.append((qd @ ks.transpose(-1, -2) * scale).masked_fill(~(seen & valid[:, :, None, :]), -math.inf))
        values.append(vs)
    probs = torch.softmax(torch.cat(logits, dim=-1), dim=-1).nan_to_num(0.0)
    out, start = 0, 0
    for part, value in zip(logits, values):
        out = out + probs[..., start:start + part.shape[-1]] @ value
        start += part.shape[-1]
    return out.transpose(1, 2).to(q.dtype)


__all__ = ["FarFieldTables", "far_field_for", "BlockFarTables", "block_far_tables", "block_far_keys", "select_sinks",
           "pooled_keys", "extra_keys", "window_far_keys", "sinks_near",
           "reference_far_attention"]
