"""The far field of a pattern, lowered to tables: which pooled key boxes each query sees.

Semantics (:class:`~dit_sparse.patterns.FarField`): the video grid is cut into boxes of
``pool`` tokens per axis (ragged at the far ends, clamped to the grid). A query box ``Qb`` and
a key box ``Kb`` are *near* when the pattern's exact mask holds at least one pair
``(q in Qb, k in Kb)``. Every video query of ``Qb`` sees, besides its exact keys, one pooled
key per box that is not near ``Qb``: the mean of the box's keys and values (over the keys
the key mask keeps), with the logit bias ``log(count)``. Text queries attend to every key
exactly, as without a far field.

Because a neighborhood's mask is the AND of three per-axis masks, "some pair of ``Qb x Kb``
is attended" is the AND of the same question per axis: the near table of the whole grid
comes from three small per-axis tables, never from an ``S x S`` mask.

Everything is cached per (pattern, layout).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from .layout import TokenLayout
from .patterns import Neighborhood, Pattern, axis_mask
from .tiling import BlockGrid


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

    def group_far(self, video_q: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The pooled keys of a query group (``video_q``: ``[nq]`` video token indices):
        ``(far_ids [n_far], rows)``, where ``rows`` is the ``[nq, n_far]`` bool of which row
        sees which of them, or None when every row sees all of them."""
        qbox = self.token_box[video_q]
        unique, which = torch.unique(qbox, return_inverse=True)
        far = ~self.near[unique]  # [u, nb]
        ids = far.any(0).nonzero().flatten()
        if unique.numel() == 1:
            return ids, None
        rows = far[:, ids][which]
        return ids, (None if bool(rows.all()) else rows)


@functools.lru_cache(maxsize=128)
def far_field_for(pattern: Pattern, layout: TokenLayout) -> FarFieldTables:
    """The cached far-field tables of ``pattern`` (which must have a ``far``) on ``layout``."""
    far = pattern.far
    if far is None:
        raise ValueError(f"pattern {pattern.spec!r} has no far field")
    if not isinstance(pattern, Neighborhood):
        raise TypeError(f"far fields are defined for neighborhood and sliding-tile patterns, got {pattern.spec!r}")
    pool = tuple(min(p, n) for p, n in zip(far.pool, layout.grid))
    boxes = BlockGrid(layout.grid, pool)
    per_axis = [_axis_near(lo, hi, d, p) for (lo, hi, d), p in zip(pattern.exact_part().windows(layout), pool)]
    nt, nh, nw = (a.shape[0] for a in per_axis)
    at, ah, aw = per_axis
    near = (at[:, None, None, :, None, None] & ah[None, :, None, None, :, None]
            & aw[None, None, :, None, None, :]).reshape(nt * nh * nw, nt * nh * nw)
    return FarFieldTables(boxes, near, boxes.token_block(), boxes.block_sizes())


def pooled_keys(k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, tables: FarFieldTables,
                key_mask: Optional[torch.Tensor] = None):
    """Mean key and value of every box and the log of its (kept) token count.

    ``k, v``: ``[B, S, H, D]``. Returns ``(kp, vp, log_count)``: ``[B, nb, H, D]`` in k's
    dtype (summed in float32) and ``[B, nb]`` float32 (``-inf`` for a box whose keys the key
    mask all drops).
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

    def mean(x):  # [B, n, H, D] video tokens -> [B, nb, H, D] box means, summed in float32
        x = x[:, v0:v0 + n].float()
        if keep is not None:
            x = x * keep[:, :, None, None]
        sums = torch.zeros(b, nb, h, d, device=k.device, dtype=torch.float32).index_add_(1, box, x)
        return (sums / counts.clamp_min(1.0)[:, :, None, None]).to(k.dtype)

    return mean(k), mean(v), counts.log()


def group_tables(pattern: Pattern, layout: TokenLayout, q_indices: List[torch.Tensor]):
    """``[(far_ids, rows)]`` for the CPU kernel's query groups (sequence token indices)."""
    tables = far_field_for(pattern, layout)
    v0 = layout.video_start
    return [tables.group_far(q - v0) for q in q_indices]


def reference_far_attention(q, k, v, pattern: Pattern, layout: TokenLayout, key_mask, scale: float):
    """The float64 definition of attention with a far field (``[B, S, H, D]`` in and out;
    builds ``S x S``: for tests only)."""
    tables = far_field_for(pattern, layout)
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    b, h, s, _ = qd.shape
    mask = pattern.exact_part().mask(layout).to(q.device)[None, None]
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :]
    kp, vp, log_count = pooled_keys(k.double(), v.double(), layout, tables, key_mask)
    kp, vp = kp.transpose(1, 2), vp.transpose(1, 2)  # [B, H, nb, D]
    far = torch.zeros(s, tables.num_boxes, dtype=torch.bool, device=q.device)
    v0 = layout.video_start
    far[v0:v0 + layout.video_len] = tables.token_far().to(q.device)
    exact = (qd @ kd.transpose(-1, -2) * scale).masked_fill(~mask, -math.inf)
    pooled = qd @ kp.transpose(-1, -2) * scale + log_count.double()[:, None, None, :]
    pooled = pooled.masked_fill(~far[None, None], -math.inf)
    probs = torch.softmax(torch.cat([exact, pooled], dim=-1), dim=-1).nan_to_num(0.0)
    out = probs[..., :s] @ vd + probs[..., s:] @ vp
    return out.transpose(1, 2).to(q.dtype)


__all__ = ["FarFieldTables", "far_field_for", "pooled_keys", "group_tables", "reference_far_attention"]
