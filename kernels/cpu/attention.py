"""CPU sparse attention: gathered token groups, each one call of PyTorch's fused SDPA kernel.

PyTorch's CPU flash-attention kernel is fast on 4-D ``[B, H, S, D]`` problems of a few
hundred query rows or more, and reads strided inputs, so diffusers' ``[B, S, H, D]`` tensors
are used in place (``transpose(1, 2)`` views): a group's query rows and key rows are
gathered with ``index_select`` along the sequence (rows of ``H * D`` contiguous elements),
attended, and scattered back with ``index_copy_``. No ``S x S`` tensor is ever built: a
group's mask is at most ``[rows, keys]`` of that group, built from per-axis factors.

The idea of chunking a tile-major sparse attention into many dense fused calls is the one of
FastVideo's sliding tile attention and the "Flash Window Attention" report; the per-axis
factorisation of the mask follows NATTEN's separable definition of 3D neighborhoods.

Inputs are plain tensors and index tables; this module knows nothing about patterns.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Masks = Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
          scale: float) -> torch.Tensor:
    """Fused SDPA on ``[B, n, H, D]`` tensors (transposed views, no copies); returns ``[B, n, H, D]``."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale
    ).transpose(1, 2)
    if mask is not None:
        # Rows whose keys are all masked: zeros, whatever the SDPA backend returned there.
        m4 = mask.view((1,) * (4 - mask.dim()) + tuple(mask.shape))
        empty = ~m4.any(-1)  # [B or 1, H or 1, n or 1]
        if bool(empty.any()):
            out = out.masked_fill(empty.permute(0, 2, 1)[..., None], 0.0)
    return out


def _factor_mask(masks: Masks, text_keys: int) -> Optional[torch.Tensor]:
    """``[nq, nk]`` bool from per-axis masks ``[qt, kt], [qh, kh], [qw, kw]`` plus text columns."""
    if masks is None:
        return None
    mt, mh, mw = masks
    m = (mt[:, None, None, :, None, None] & mh[None, :, None, None, :, None]
         & mw[None, None, :, None, None, :])
    nq = mt.shape[0] * mh.shape[0] * mw.shape[0]
    m = m.reshape(nq, -1)
    if text_keys:
        m = torch.cat([m, m.new_ones(nq, text_keys)], dim=1)
    return m


def text_query_attention(q, k, v, out, text_range: Tuple[int, int], key_mask, scale):
    """Text queries attend to every key: one dense call on a contiguous slice."""
    t0, t1 = text_range
    if t1 <= t0:
        return
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out[:, t0:t1] = _sdpa(q[:, t0:t1], k, v, mask, scale)


def grouped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups: Sequence[Tuple[torch.Tensor, torch.Tensor, Masks, int]],
    text_range: Tuple[int, int],
    key_mask: Optional[torch.Tensor],
    scale: float,
) -> torch.Tensor:
    """Static sparse attention (neighborhood, sliding tile, dense).

    Args:
        q, k, v: ``[B, S, H, D]``, contiguous.
        groups: per query group ``(q_index [nq], kv_index [nk], masks, text_keys)``: token
            indices into S; ``masks`` is None (every query sees every key) or per-axis bool
            factors whose outer AND is the ``[nq, nk - text_keys]`` mask; the last
            ``text_keys`` keys are always kept.
        text_range: ``(start, stop)`` of the text queries (attend to everything).
        key_mask: ``[B, S]`` bool (True = keep) or None.
    Returns:
        ``[B, S, H, D]``.
    """
    out = torch.empty_like(q)
    for q_index, kv_index, masks, text_keys in groups:
        mask = _factor_mask(masks, text_keys)
        if key_mask is not None:
            km = key_mask.index_select(1, kv_index)[:, None, None, :]
            mask = km if mask is None else (mask & km)
        o = _sdpa(q.index_select(1, q_index), k.index_select(1, kv_index), v.index_select(1, kv_index),
                  mask, scale)
        out.index_copy_(1, q_index, o)
    text_query_attention(q, k, v, out, text_range, key_mask, scale)
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
) -> torch.Tensor:
    """Block-sparse attention with a different key-block set per batch and head.

    Args:
        q, k, v: ``[B, S, H, D]``, contiguous.
        block_tokens: ``[nb + 1, P]`` token indices of every video block (padded slots and
            the last, all-padding "null" block point anywhere valid).
        block_valid: ``[nb + 1, P]`` bool, or None when no slot is padding (then the null
            block is never selected).
        selection: ``[B, H, nb, n_sel]`` int64 chosen key blocks per query block; ``nb``
            (the null block) pads rows that keep fewer blocks.
        text_index: ``[n_text]`` int64 text token indices (global keys).
    Returns:
        ``[B, S, H, D]``.
    """
    b, s, h, d = q.shape
    nb = block_tokens.shape[0] - 1
    out = torch.empty_like(q)
    k_rows = k.reshape(b * s * h, d)
    v_rows = v.reshape(b * s * h, d)
    bh_base = (torch.arange(b)[:, None] * s * h + torch.arange(h)[None, :])[:, :, None]  # [B, H, 1]
    n_text = text_index.numel()
    if n_text:
        text_rows = bh_base + text_index[None, None, :] * h  # [B, H, n_text]
    if key_mask is not None:
        km_rows = key_mask[:, None, :].expand(b, h, s)
    for i in range(nb):
        q_tok = block_tokens[i] if block_valid is None else block_tokens[i][block_valid[i]]
        blocks = selection[:, :, i]  # [B, H, n_sel]
        tok = block_tokens[blocks].reshape(b, h, -1)  # [B, H, n_sel * P]
        rows = bh_base + tok * h
        if n_text:
            rows = torch.cat([rows, text_rows], dim=-1)
            tok = torch.cat([tok, text_index.expand(b, h, n_text)], dim=-1)
        nk = rows.shape[-1]
        kg = k_rows.index_select(0, rows.reshape(-1)).view(b, h, nk, d).transpose(1, 2)
        vg = v_rows.index_select(0, rows.reshape(-1)).view(b, h, nk, d).transpose(1, 2)
        mask = None
        if block_valid is not None:
            valid = block_valid[blocks].reshape(b, h, -1)
            if n_text:
                valid = torch.cat([valid, valid.new_ones(b, h, n_text)], dim=-1)
            mask = valid
        if key_mask is not None:
            kmask = km_rows.gather(-1, tok)
            mask = kmask if mask is None else mask & kmask
        if mask is not None:
            mask = mask[:, :, None, :]
        o = _sdpa(q.index_select(1, q_tok), kg, vg, mask, scale)
        out.index_copy_(1, q_tok, o)
    text_query_attention(q, k, v, out, text_range, key_mask, scale)
    return out
