"""CPU sparse attention: gathered token groups, each one call of PyTorch's fused SDPA kernel.

PyTorch's CPU flash-attention kernel is fast on 4-D ``[B, H, S, D]`` problems of a few
hundred query rows or more. Inputs are laid out heads-major once (one pass); a group's query
and key rows are then gathered as whole ``D``-element rows along dim 0 of a 2-D view
(:func:`flat_rows`), attended, and copied in group order into one tokens-major buffer
(:class:`VideoRows`), which a single row gather puts in token order at the end. No
``S x S`` tensor is ever built: a group's mask is at most ``[rows, keys]`` of that group,
built from per-axis factors.

The idea of chunking a tile-major sparse attention into many dense fused calls is the one of
FastVideo's sliding tile attention and the "Flash Window Attention" report; the per-axis
factorisation of the mask follows NATTEN's separable definition of 3D neighborhoods.

Inputs are plain tensors and index tables; this module knows nothing about patterns.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from . import parallel

Masks = Union[None, torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
          scale: float, may_have_empty_rows: bool = False) -> torch.Tensor:
    """Fused SDPA on ``[B, n, H, D]`` tensors (transposed views, no copies); returns ``[B, n, H, D]``.

    ``mask`` is bool (True = keep) or additive in q's dtype. With ``may_have_empty_rows``
    (a key mask is in play), rows whose keys are all masked are set to 0 whatever the SDPA
    backend returned there.
    """
    return _sdpa_heads(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, scale,
                       may_have_empty_rows).transpose(1, 2)


def _sdpa_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                scale: float, may_have_empty_rows: bool = False) -> torch.Tensor:
    """:func:`_sdpa` on ``[B, H, n, D]`` tensors; returns ``[B, H, n, D]``."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if may_have_empty_rows and mask is not None:
        keep = mask if mask.dtype == torch.bool else mask > float("-inf")
        m4 = keep.view((1,) * (4 - keep.dim()) + tuple(keep.shape))
        empty = ~m4.any(-1)  # [B or 1, H or 1, n or 1]
        if bool(empty.any()):
            out = out.masked_fill(empty[..., None], 0.0)
    return out


def heads_major(x: torch.Tensor) -> torch.Tensor:
    """``[B, S, H, D]`` -> contiguous ``[B, H, S, D]`` (one pass).

    PyTorch's CPU flash kernel runs ~20% faster on contiguous per-head rows than on the
    transposed views of diffusers' layout, and gathering ``D``-element rows from this layout
    is as cheap as gathering ``H * D`` rows from the other, so every kernel here gathers
    from and attends in this layout.
    """
    return x.transpose(1, 2).contiguous()


def factor_mask(masks: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], text_keys: int,
                dtype: torch.dtype) -> torch.Tensor:
    """Additive ``[nq, nk]`` mask (0 keep, -inf drop) from per-axis bool masks
    ``[qt, kt], [qh, kh], [qw, kw]``, plus ``text_keys`` always-kept columns."""
    add = [torch.zeros(m.shape, dtype=dtype).masked_fill_(~m, float("-inf")) for m in masks]
    at, ah, aw = add
    m = at[:, None, None, :, None, None] + ah[None, :, None, None, :, None] + aw[None, None, :, None, None, :]
    nq = at.shape[0] * ah.shape[0] * aw.shape[0]
    m = m.reshape(nq, -1)
    if text_keys:
        m = torch.cat([m, m.new_zeros(nq, text_keys)], dim=1)
    return m


def flat_rows(bh: int, s: int, index: torch.Tensor) -> torch.Tensor:
    """Row numbers of ``index`` (tokens) in every (batch, head) of a ``[B * H * S, D]`` view
    of a heads-major tensor, ``(batch, head)``-major: ``[B * H * n]``.

    Gathering with these along dim 0 of a 2-D view copies whole ``D``-element rows, about
    twice as fast on CPU as ``index_select`` along dim 2 of the 4-D tensor."""
    return (torch.arange(bh)[:, None] * s + index[None, :]).reshape(-1)


class VideoRows:
    """Collects the per-group outputs of the video queries, in group order, tokens-major
    (``[B, L, H, D]``, the layout PyTorch's CPU flash kernel writes its output in, so each
    copy is a plain block copy), and puts them in token order with one row gather."""

    def __init__(self, q: torch.Tensor, video_len: int):
        b, _, h, d = q.shape
        self.buf = q.new_empty(b, video_len, h, d)

    def put(self, pos: int, o: torch.Tensor) -> None:
        """``o``: ``[B, H, n, D]``, the outputs of the ``n`` queries that start at ``pos`` in
        group order (groups may arrive in any order, from any thread)."""
        self.buf[:, pos:pos + o.shape[2]] = o.transpose(1, 2)

    def assemble(self, q: torch.Tensor, video_inverse: torch.Tensor, video_start: int) -> torch.Tensor:
        """``[B, S, H, D]`` with the video rows in place (``video_inverse``: where each video
        token's row sits in group order); text rows are left for the caller."""
        b, n, h, d = self.buf.shape
        rows = self.buf.view(b, n, h * d)
        out = torch.empty_like(q)
        if out.shape[1] == n and not rows.requires_grad:  # no text: gather straight into the output
            torch.index_select(rows, 1, video_inverse, out=out.view(b, n, h * d))
        else:
            out[:, video_start:video_start + n] = rows.index_select(1, video_inverse).view(b, n, h, d)
        return out


def text_query_attention(qh, kh, vh, out, text_range: Tuple[int, int], key_mask, scale):
    """Text queries attend to every key: one dense call on a contiguous slice
    (``qh, kh, vh`` heads-major, ``out`` ``[B, S, H, D]``)."""
    t0, t1 = text_range
    if t1 <= t0:
        return
    mask = None if key_mask is None else key_mask[:, None, None, :]
    o = _sdpa_heads(qh[:, :, t0:t1], kh, vh, mask, scale, may_have_empty_rows=True)
    out[:, t0:t1] = o.transpose(1, 2)


def grouped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups: Sequence[Tuple[torch.Tensor, torch.Tensor, Masks, int]],
    text_range: Tuple[int, int],
    key_mask: Optional[torch.Tensor],
    scale: float,
    video_inverse: torch.Tensor,
    video_start: int,
) -> torch.Tensor:
    """Static sparse attention (neighborhood, sliding tile, dense).

    Args:
        q, k, v: ``[B, S, H, D]``, contiguous.
        groups: per query group ``(q_index [nq], kv_index [nk], mask, text_keys)``: token
            indices into S; ``mask`` is None (every query sees every key), a ready additive
            ``[nq, nk]`` mask in q's dtype, or per-axis bool factors whose outer AND is the
            ``[nq, nk - text_keys]`` mask; the last ``text_keys`` keys are always kept.
        text_range: ``(start, stop)`` of the text queries (attend to everything).
        key_mask: ``[B, S]`` bool (True = keep) or None.
        video_inverse: ``[T*H*W]`` int64, the inverse of the concatenated ``q_index``
            (minus ``video_start``): where each video token's row sits in group order.
    Returns:
        ``[B, S, H, D]``.
    """
    qh, kh, vh = heads_major(q), heads_major(k), heads_major(v)
    b, h, s, d = qh.shape
    q2, k2, v2 = qh.view(-1, d), kh.view(-1, d), vh.view(-1, d)
    video = VideoRows(q, video_inverse.numel())

    def group(pos, q_index, kv_index, masks, text_keys):
        mask = factor_mask(masks, text_keys, q.dtype) if isinstance(masks, tuple) else masks
        if key_mask is not None:
            km = key_mask.index_select(1, kv_index)[:, None, None, :]
            mask = km if mask is None else km & (mask > float("-inf"))
        qi, ki = flat_rows(b * h, s, q_index), flat_rows(b * h, s, kv_index)
        nq, nk = q_index.numel(), kv_index.numel()
        o = _sdpa_heads(q2.index_select(0, qi).view(b, h, nq, d), k2.index_select(0, ki).view(b, h, nk, d),
                        v2.index_select(0, ki).view(b, h, nk, d), mask, scale, may_have_empty_rows=key_mask is not None)
        video.put(pos, o)

    tasks, pos = [], 0
    for g in groups:
        tasks.append(functools.partial(group, pos, *g))
        pos += g[0].numel()
    parallel.run(tasks, q, k, v)
    out = video.assemble(q, video_inverse, video_start)
    text_query_attention(qh, kh, vh, out, text_range, key_mask, scale)
    return out


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_tokens: torch.Tensor,
    block_valid: Optional[torch.Tensor],
    selection: torch.Tensor,
    text_index: torch.Tensor,
    text_range: Tuple[int, int],
    key_mask: Optional[torch.Tensor],
    scale: float,
    video_inverse: torch.Tensor,
    video_start: int,
    pack: bool = False,
) -> torch.Tensor:
    """Block-sparse attention with a different key-block set per batch and head.

    Two ways to gather a query block's keys:

    * whole blocks (default): keys and values are first laid out block-major
      (``[B, H, nb + 1, P, D]``, one pass), so that the chosen blocks are gathered as
      contiguous rows of ``P`` slots; padded slots are masked.
    * ``pack=True``, for grids the blocks do not tile evenly: padding every chosen block to
      ``P`` slots wastes up to half of the work there (13x30x52 in 4x8x8 blocks: 71% of the
      slots are tokens, and the small edge blocks are chosen more often), so each (batch,
      head) row gathers only the valid tokens of its blocks, packed; rows of similar length
      share one call (padded to the group's longest and masked), at most four per block.

    Args:
        q, k, v: ``[B, S, H, D]``, contiguous.
        block_tokens: ``[nb + 1, P]`` token indices of every video block (padded slots and
            the last, all-padding "null" block point anywhere valid).
        block_valid: ``[nb + 1, P]`` bool, or None when no slot is padding (then the null
            block is never selected); required with ``pack``.
        selection: ``[B, H, nb, n_sel]`` int64 chosen key blocks per query block; ``nb``
            (the null block) pads rows that keep fewer blocks.
        text_index: ``[n_text]`` int64 text token indices (global keys).
        video_inverse: where each video token's row sits when the valid tokens of the
            blocks are concatenated in block order.
    Returns:
        ``[B, S, H, D]``.
    """
    qh, kh, vh = heads_major(q), heads_major(k), heads_major(v)
    per_block = _packed_block_outputs if pack else _whole_block_outputs
    video = VideoRows(q, video_inverse.numel())
    per_block(video, qh, kh, vh, block_tokens, block_valid, selection, text_index, key_mask, scale)
    out = video.assemble(q, video_inverse, video_start)
    text_query_attention(qh, kh, vh, out, text_range, key_mask, scale)
    return out


def _whole_block_outputs(video, qh, kh, vh, block_tokens, block_valid, selection, text_index, key_mask, scale):
    """Per query block ``[B, H, n, D]`` outputs into ``video``, keys gathered as whole padded blocks."""
    b, h, s, d = qh.shape
    nb1, p = block_tokens.shape
    n_sel = selection.shape[-1]
    flat = block_tokens.reshape(-1)
    q2 = qh.view(-1, d)
    all_rows = flat_rows(b * h, s, flat)

    def block_major(t):  # [B, H, S, D] -> rows of whole blocks [B * H * nb1, P * D]
        return t.view(-1, d).index_select(0, all_rows).view(b * h * nb1, p * d)

    k_blocks, v_blocks = block_major(kh), block_major(vh)
    base = ((torch.arange(b)[:, None] * h + torch.arange(h)[None, :]) * nb1)[:, :, None]  # [B, H, 1]
    n_text = text_index.numel()
    if n_text:
        k_text = kh.index_select(2, text_index)  # [B, H, n_text, D]
        v_text = vh.index_select(2, text_index)
    valid_rows = None
    if block_valid is not None or key_mask is not None:
        valid_rows = torch.ones(b, h, nb1, p, dtype=torch.bool)
        if block_valid is not None:
            valid_rows = valid_rows & block_valid
        if key_mask is not None:
            valid_rows = valid_rows & key_mask.index_select(1, flat).view(b, 1, nb1, p)
        valid_rows = valid_rows.reshape(b * h * nb1, p)
        text_valid = (key_mask.index_select(1, text_index)[:, None, :].expand(b, h, n_text)
                      if key_mask is not None else torch.ones(b, h, n_text, dtype=torch.bool))

    def query_block(i, pos, q_tok):
        ids = (base + selection[:, :, i]).reshape(-1)
        kg = k_blocks.index_select(0, ids).view(b, h, n_sel * p, d)
        vg = v_blocks.index_select(0, ids).view(b, h, n_sel * p, d)
        if n_text:
            kg = torch.cat([kg, k_text], dim=2)
            vg = torch.cat([vg, v_text], dim=2)
        mask = None
        if valid_rows is not None:
            mask = valid_rows.index_select(0, ids).view(b, h, n_sel * p)
            if n_text:
                mask = torch.cat([mask, text_valid], dim=-1)
            mask = mask[:, :, None, :]
        qg = q2.index_select(0, flat_rows(b * h, s, q_tok)).view(b, h, -1, d)
        video.put(pos, _sdpa_heads(qg, kg, vg, mask, scale, may_have_empty_rows=key_mask is not None))

    parallel.run(_block_tasks(query_block, block_tokens, block_valid), qh, kh, vh)


def _block_tasks(fn, block_tokens, block_valid):
    """``fn(i, pos, q_tokens)`` for every query block ``i`` (not the null block), with its
    valid tokens and where its rows start in block order."""
    tasks, pos = [], 0
    for i in range(block_tokens.shape[0] - 1):
        q_tok = block_tokens[i] if block_valid is None else block_tokens[i][block_valid[i]]
        tasks.append(functools.partial(fn, i, pos, q_tok))
        pos += q_tok.numel()
    return tasks


def _length_groups(lengths: torch.Tensor, ratio: float = 0.8, max_groups: int = 4) -> list:
    """Split rows into at most ``max_groups`` groups of similar length (longest first): a
    new group starts when a row is shorter than ``ratio`` of its group's longest, so padding
    every row of a group to its longest wastes at most ``1 / ratio``."""
    order = torch.argsort(lengths, descending=True, stable=True)
    ls = lengths[order].tolist()
    groups, start = [], 0
    for j in range(1, len(ls) + 1):
        if j == len(ls) or (ls[j] < ratio * ls[start] and len(groups) < max_groups - 1):
            groups.append((order[start:j], int(ls[start])))
            start = j
    return groups


def _packed_block_outputs(video, qh, kh, vh, block_tokens, block_valid, selection, text_index, key_mask, scale):
    """Per query block ``[B, H, n, D]`` outputs into ``video``, each row's keys packed to its valid tokens."""
    b, h, s, d = qh.shape
    bh = b * h
    nb = block_tokens.shape[0] - 1
    q_rows, k_rows, v_rows = qh.view(bh * s, d), kh.view(bh * s, d), vh.view(bh * s, d)
    row_base = torch.arange(bh) * s  # first row of every (batch, head) in the flat views
    batch_of = torch.arange(bh) // h
    n_text = text_index.numel()
    sel = selection.reshape(bh, nb, -1)

    def query_block(i, pos, q_tok):
        tok = block_tokens.index_select(0, sel[:, i].reshape(-1)).view(bh, -1)  # [BH, n_sel * P]
        val = block_valid.index_select(0, sel[:, i].reshape(-1)).view(bh, -1)
        lengths = val.sum(-1)
        width = int(lengths.max())
        # pack each row's valid tokens to its front (a scatter by running count, O(n))
        slot = (val.cumsum(-1) - 1).masked_fill_(~val, width)
        packed = torch.zeros(bh, width + 1, dtype=torch.int64).scatter_(1, slot, tok)[:, :width]
        o_i = qh.new_empty(bh, q_tok.numel(), d)
        for rows, n in _length_groups(lengths):
            g = rows.numel()
            base = row_base.index_select(0, rows)[:, None]
            tokens = packed.index_select(0, rows)[:, :n]
            keys = (base + tokens).reshape(-1)
            kg, vg = k_rows.index_select(0, keys).view(g, n, d), v_rows.index_select(0, keys).view(g, n, d)
            row_mask = None if key_mask is None else key_mask.index_select(0, batch_of.index_select(0, rows))
            keep = None
            if bool((lengths.index_select(0, rows) < n).any()) or key_mask is not None:
                keep = torch.arange(n)[None, :] < lengths.index_select(0, rows)[:, None]
                if row_mask is not None:
                    keep = keep & row_mask.gather(1, tokens)
            if n_text:
                t_rows = (base + text_index[None, :]).reshape(-1)
                kg = torch.cat([kg, k_rows.index_select(0, t_rows).view(g, n_text, d)], dim=1)
                vg = torch.cat([vg, v_rows.index_select(0, t_rows).view(g, n_text, d)], dim=1)
                if keep is not None:
                    t_keep = (row_mask.index_select(1, text_index) if row_mask is not None
                              else torch.ones(g, n_text, dtype=torch.bool))
                    keep = torch.cat([keep, t_keep], dim=1)
            qg = q_rows.index_select(0, (base + q_tok[None, :]).reshape(-1)).view(g, 1, -1, d)
            mask = None if keep is None else keep[:, None, None, :]
            o = _sdpa_heads(qg, kg[:, None], vg[:, None], mask, scale, may_have_empty_rows=key_mask is not None)
            o_i.index_copy_(0, rows, o[:, 0])
        video.put(pos, o_i.view(b, h, -1, d))

    parallel.run(_block_tasks(query_block, block_tokens, block_valid), qh, kh, vh)
