"""CPU sparse attention: gathered token groups, each one call of PyTorch's fused SDPA kernel.

PyTorch's CPU flash-attention kernel is fast on 4-D ``[B, H, S, D]`` problems of a few
hundred query rows or more, and takes ``[B, H, n, D]`` views of diffusers' tokens-major
``[B, S, H, D]`` layout as they are. A group's query and key tokens are gathered as whole
rows of a 2-D view of that layout (:func:`token_rows`; per-head ``D``-element rows where the
key sets differ by head, :func:`head_rows`), attended, and the output rows copied into place
by the group itself (:class:`Output`): no copy of the whole of q, k or v is made. No
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
                scale: float, may_have_empty_rows: bool = False, with_lse: bool = False):
    """:func:`_sdpa` on ``[B, H, n, D]`` tensors; returns ``[B, H, n, D]``, or with ``with_lse``
    ``(out, lse)``: also the rows' float32 log-sum-exp of the scaled logits ``[B, H, n]``
    (``-inf`` for a row without keys), from PyTorch's CPU flash kernel, which computes it anyway."""
    if with_lse:
        if mask is not None and mask.dtype == torch.bool:  # the kernel takes additive masks only
            mask = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=mask, scale=scale)[:2]
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if may_have_empty_rows and mask is not None:
        keep = mask if mask.dtype == torch.bool else mask > float("-inf")
        m4 = keep.view((1,) * (4 - keep.dim()) + tuple(keep.shape))
        empty = ~m4.any(-1)  # [B or 1, H or 1, n or 1]
        if bool(empty.any()):
            out = out.masked_fill(empty[..., None], 0.0)
            if with_lse:
                lse = lse.masked_fill(empty, float("-inf"))
    return (out, lse) if with_lse else out


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


def token_rows(b: int, s: int, index: torch.Tensor) -> torch.Tensor:
    """Row numbers of the tokens ``index`` of every batch in a ``[B * S, H * D]`` view of a
    ``[B, S, H, D]`` tensor, batch-major: ``[B * n]``."""
    return index if b == 1 else (torch.arange(b)[:, None] * s + index[None, :]).reshape(-1)


def head_base(b: int, s: int, h: int) -> torch.Tensor:
    """Row of token 0 of every (batch, head) in a ``[B * S * H, D]`` view of a
    ``[B, S, H, D]`` tensor, ``(batch, head)``-major: ``[B * H]``; token ``t`` is ``h * t``
    rows further on."""
    return (torch.arange(b)[:, None] * (s * h) + torch.arange(h)[None, :]).reshape(-1)


def head_rows(b: int, s: int, h: int, index: torch.Tensor) -> torch.Tensor:
    """Row numbers of the tokens ``index`` (``[n]``) of every (batch, head) in a
    ``[B * S * H, D]`` view of a ``[B, S, H, D]`` tensor, ``(batch, head)``-major: ``[B * H * n]``.

    Gathering ``D``-element rows straight from diffusers' tokens-major layout costs no more
    than gathering them from a heads-major copy, and saves the copy (a full pass over each of
    q, k and v)."""
    return (head_base(b, s, h)[:, None] + index[None, :] * h).reshape(-1)


def heads_view(x: torch.Tensor) -> torch.Tensor:
    """``[B, S, H, D]`` -> ``[B, H, S, D]`` view, no copy."""
    return x.transpose(1, 2)


class Output:
    """The ``[B, S, H, D]`` output, written in place by the groups as they finish (from any
    thread: every group owns its rows); with ``with_lse``, also the rows' log-sum-exp
    ``[B, S, H]`` float32 (for :func:`merge_extra_keys`)."""

    def __init__(self, q: torch.Tensor, with_lse: bool = False):
        self.out = torch.empty_like(q)
        b, s, h, d = q.shape
        self.s = s
        self.tokens = self.out.view(b * s, h * d)
        self.rows = self.out.view(b * s * h, d)
        self.lse = torch.full((b, s, h), float("-inf")) if with_lse else None

    def put_tokens(self, q_index: torch.Tensor, o: torch.Tensor, lse: Optional[torch.Tensor] = None) -> None:
        """``o``: ``[B, H, n, D]`` outputs of the tokens ``q_index`` (``[n]``) of every batch
        (``lse``: their ``[B, H, n]``). PyTorch's CPU SDPA writes its output tokens-major, so
        the copy is whole ``H * D`` rows."""
        b, h, n, d = o.shape
        rows = token_rows(b, self.s, q_index)
        self.tokens.index_copy_(0, rows, o.transpose(1, 2).reshape(b * n, h * d))
        if lse is not None:
            self.lse.view(-1, h).index_copy_(0, rows, lse.transpose(1, 2).reshape(b * n, h))

    def put_rows(self, rows: torch.Tensor, o: torch.Tensor, lse: Optional[torch.Tensor] = None) -> None:
        """``o``: ``[..., D]`` outputs of the rows ``rows`` of the ``[B * S * H, D]`` view
        (``lse``: their ``[...]``)."""
        self.rows.index_copy_(0, rows, o.reshape(-1, o.shape[-1]))
        if lse is not None:
            self.lse.view(-1).index_copy_(0, rows, lse.reshape(-1))


def text_query_attention(q, k, v, out, text_range: Tuple[int, int], key_mask, scale):
    """Text queries attend to every key: one dense call on a contiguous slice
    (``q, k, v, out``: ``[B, S, H, D]``)."""
    t0, t1 = text_range
    if t1 <= t0:
        return
    mask = None if key_mask is None else key_mask[:, None, None, :]
    o = _sdpa_heads(heads_view(q[:, t0:t1]), heads_view(k), heads_view(v), mask, scale, may_have_empty_rows=True)
    out[:, t0:t1] = o.transpose(1, 2)


Extra = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Tuple[int, int], torch.Tensor]


def merge_extra_keys(out: torch.Tensor, lse: torch.Tensor, q: torch.Tensor, extra: Extra, scale: float,
                     chunk_elements: int = 1 << 22) -> None:
    """Fold keys that whole classes of queries see besides their exact keys (a far field's
    pooled keys and sinks) into the exact outputs, in place.

    The exact part ran as plain fused calls that also returned each row's log-sum-exp; the
    extra keys are attended here by the same fused kernel, in one call per chunk of
    consecutive queries (each row's additive mask picked from its class's bias), and the two
    partial softmaxes are combined by their log-sum-exps (the split-softmax merge of
    FlashAttention's split-KV decoding). So the exact calls keep the fused kernel's unmasked
    path, and no group ever carries a mask over the extra keys. A chunk's mask has at most
    ``chunk_elements`` entries: memory is O(chunk), not O(S x extra keys).

    Args:
        out: ``[B, S, H, D]`` normalised exact outputs (0 for rows without exact keys).
        lse: ``[B, S, H]`` float32 their log-sum-exps (``-inf``: no exact key).
        q: ``[B, S, H, D]``.
        extra: ``(ke, ve, bias, (start, stop), classes)``: keys and values ``[B, H, E, D]``,
            the additive ``bias [B or 1, H or 1, C, E]`` (``-inf``: not seen) of each query
            class, and the query tokens ``start:stop`` that see extra keys with their class
            ``[stop - start]`` int64.
    """
    ke, ve, bias, (t0, t1), classes = extra
    e = ke.shape[2]
    if e == 0 or t1 <= t0:
        return
    seen = (bias > float("-inf")).any(-1)  # [B or 1, H or 1, C]: classes that see an extra key
    blind = None if bool(seen.all()) else ~seen
    bias = bias.to(q.dtype)
    step = max(1, chunk_elements // (bias.shape[0] * bias.shape[1] * e))
    for start in range(t0, t1, step):
        stop = min(start + step, t1)
        cls = classes[start - t0:stop - t0]
        mask = bias.index_select(2, cls)  # [B or 1, H or 1, m, E]
        o_extra, l_extra = _sdpa_heads(heads_view(q[:, start:stop]), ke, ve, mask, scale, with_lse=True)
        if blind is not None:  # rows without extra keys: the kernel's lse there is not -inf
            none = blind.index_select(2, cls)
            l_extra = l_extra.masked_fill(none, float("-inf"))
            o_extra = o_extra.masked_fill(none[..., None], 0.0)
        # the exact part's share of the row's softmax mass: exp(l_exact) / (exp(l_exact) +
        # exp(l_extra)); a row without any key (both -inf) keeps its exact output, 0
        w = torch.sigmoid(lse[:, start:stop] - l_extra.transpose(1, 2)).nan_to_num_(1.0)  # [B, m, H]
        o_exact = out[:, start:stop]
        torch.lerp(o_extra.transpose(1, 2), o_exact, w[..., None].to(out.dtype), out=o_exact)


def _check_extra_grad(extra, *inputs: torch.Tensor) -> None:
    if extra is not None and torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        raise NotImplementedError("extra keys (far fields) on the CPU kernel are inference-only: PyTorch's CPU "
                                  "flash kernel returns the log-sum-exp they are merged by without a gradient; "
                                  "run under torch.no_grad() or torch.inference_mode()")


def grouped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups: Sequence[Tuple[torch.Tensor, torch.Tensor, Masks, int]],
    text_range: Tuple[int, int],
    key_mask: Optional[torch.Tensor],
    scale: float,
    extra: Optional[Extra] = None,
    group_threads: bool = True,
) -> torch.Tensor:
    """Static sparse attention (neighborhood, sliding tile, dense).

    A group's query and key tokens are gathered as whole ``H * D`` rows of diffusers'
    tokens-major layout and attended as ``[B, H, n, D]`` views of the gathered rows (masked
    groups gather their keys per head instead); the output rows are copied back the same
    way: faster than a heads-major copy of q, k, v with per-head row gathers and one final
    reordering gather (docs/benchmarks.md).

    Args:
        q, k, v: ``[B, S, H, D]``, contiguous.
        groups: per query group ``(q_index [nq], kv_index [nk], mask, text_keys)``: token
            indices into S; ``mask`` is None (every query sees every key), a ready additive
            ``[nq, nk]`` mask in q's dtype, or per-axis bool factors whose outer AND is the
            ``[nq, nk - text_keys]`` mask; the last ``text_keys`` keys are always kept. The
            groups' queries cover every video token once.
        text_range: ``(start, stop)`` of the text queries (attend to everything).
        key_mask: ``[B, S]`` bool (True = keep) or None.
        extra: keys that classes of video queries see besides their exact keys (a far
            field's pooled keys and sinks), as :func:`merge_extra_keys` takes them.
        group_threads: run groups side by side on single-threaded workers where it is safe
            (:mod:`.parallel`); the core passes ``DIT_SPARSE_CPU_GROUP_THREADS``' setting.
    Returns:
        ``[B, S, H, D]``.
    """
    _check_extra_grad(extra, q, k, v)
    b, s, h, d = q.shape
    q2, k2, v2 = (t.view(b * s, h * d) for t in (q, k, v))
    k1, v1 = k.view(-1, d), v.view(-1, d)
    out = Output(q, with_lse=extra is not None)

    def group(i, q_index, kv_index, masks, text_keys):
        mask = factor_mask(masks, text_keys, q.dtype) if isinstance(masks, tuple) else masks
        if key_mask is not None:
            km = key_mask.index_select(1, kv_index)[:, None, None, :]
            mask = km if mask is None else km & (mask > float("-inf"))
        nq, nk = q_index.numel(), kv_index.numel()

        def gather(t2, rows, n):
            return heads_view(t2.index_select(0, rows).view(b, n, h, d))

        if mask is not None:
            # masked (neighbourhood) groups attend faster to contiguous per-head keys: gather
            # them heads-major, D-element rows (the transposed views win where nothing is
            # masked; docs/benchmarks.md)
            kr = head_rows(b, s, h, kv_index)
            kg, vg = k1.index_select(0, kr).view(b, h, nk, d), v1.index_select(0, kr).view(b, h, nk, d)
        else:
            ki = token_rows(b, s, kv_index)
            kg, vg = gather(k2, ki, nk), gather(v2, ki, nk)
        o = _sdpa_heads(gather(q2, token_rows(b, s, q_index), nq), kg, vg, mask, scale,
                        may_have_empty_rows=key_mask is not None, with_lse=out.lse is not None)
        out.put_tokens(q_index, *(o if out.lse is not None else (o,)))

    parallel.run([functools.partial(group, i, *g) for i, g in enumerate(groups)], q, k, v,
                 group_threads=group_threads)
    if extra is not None:
        merge_extra_keys(out.out, out.lse, q, extra, scale)
    text_query_attention(q, k, v, out.out, text_range, key_mask, scale)
    return out.out


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
    group_threads: bool = True,
    extra: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """Block-sparse attention with a different key-block set per batch and head.

    Two ways to gather a query block's keys:

    * whole blocks (default, where every query block is whole): keys, values and queries
      are first laid out block-major (``[B, H, nb + 1, P, D]``, one gather each), so that
      the chosen blocks are gathered as contiguous rows of ``P`` slots; padded slots (the
      null block) are masked.
    * packed, where some query block is ragged (grids the blocks do not tile evenly): padding
      every chosen block to ``P`` slots wastes up to half of the work there (13x30x52 in
      4x8x8 blocks: 71% of the slots are tokens, and the small edge blocks are chosen more
      often), so each (batch, head) row gathers only the valid tokens of its blocks, packed;
      rows of similar length share one call (padded to the group's longest and masked), at
      most four per block.

    Args:
        q, k, v: ``[B, S, H, D]``, contiguous.
        block_tokens: ``[nb + 1, P]`` token indices of every video block (padded slots and
            the last, all-padding "null" block point anywhere valid).
        block_valid: ``[nb + 1, P]`` bool, or None when no slot is padding (then the null
            block is never selected); ragged rows route to the packed way.
        selection: ``[B, H, nb, n_sel]`` int64 chosen key blocks per query block; ``nb``
            (the null block) pads rows that keep fewer blocks.
        text_index: ``[n_text]`` int64 text token indices (global keys).
        group_threads: as in :func:`grouped_attention`.
        extra: keys that query blocks see besides their blocks (a far field's pooled keys and
            sinks), as :func:`merge_extra_keys` takes them (the classes are query blocks).
    Returns:
        ``[B, S, H, D]``.
    """
    _check_extra_grad(extra, q, k, v)
    ragged = block_valid is not None and not bool(block_valid[:-1].all())  # some query block is not whole
    per_block = _packed_block_outputs if ragged else _whole_block_outputs
    out = Output(q, with_lse=extra is not None)
    tasks, finish = per_block(out, q, k, v, block_tokens, block_valid, selection, text_index, key_mask, scale)
    parallel.run(tasks, q, k, v, group_threads=group_threads)
    if finish is not None:
        finish()
    if extra is not None:
        merge_extra_keys(out.out, out.lse, q, extra, scale)
    text_query_attention(q, k, v, out.out, text_range, key_mask, scale)
    return out.out


def _whole_block_outputs(out, q, k, v, block_tokens, block_valid, selection, text_index, key_mask, scale):
    """Per query block tasks, keys gathered as whole padded blocks (every query block whole);
    returns ``(tasks, finish)``.

    The queries are laid out block-major like the keys (one gather), and each task writes
    its output (and log-sum-exp) into a block-major buffer by one copy; ``finish`` scatters
    the buffer back to token order in one pass. A task is its key gathers, one fused call
    and one copy."""
    b, s, h, d = q.shape
    with_lse = out.lse is not None
    nb1, p = block_tokens.shape
    nb, n_sel = nb1 - 1, selection.shape[-1]
    flat = block_tokens.reshape(-1)
    all_rows = head_rows(b, s, h, flat)

    def block_major(t):  # [B, S, H, D] -> rows of whole blocks [B * H * nb1, P * D]
        return t.view(-1, d).index_select(0, all_rows).view(b * h * nb1, p * d)

    k_blocks, v_blocks = block_major(k), block_major(v)
    base = ((torch.arange(b)[:, None] * h + torch.arange(h)[None, :]) * nb1)[:, :, None, None]  # [B, H, 1, 1]
    ids_all = (base + selection).permute(2, 0, 1, 3).reshape(nb, -1)  # [nb, B * H * n_sel] rows of k_blocks
    n_text = text_index.numel()
    if n_text:
        k_text = heads_view(k.index_select(1, text_index))  # [B, H, n_text, D]
        v_text = heads_view(v.index_select(1, text_index))
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

    q_rows = all_rows.view(b * h, nb1 * p)[:, :nb * p].reshape(-1)  # the video query blocks' rows
    q_blocks = q.view(-1, d).index_select(0, q_rows).view(b, h, nb, p, d)
    o_blocks = torch.empty(b, h, nb, p, d, dtype=q.dtype)
    lse_blocks = torch.empty(b, h, nb, p) if with_lse else None

    def whole_block(i):
        ids = ids_all[i]
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
        o = _sdpa_heads(q_blocks[:, :, i], kg, vg, mask, scale, may_have_empty_rows=key_mask is not None,
                        with_lse=with_lse)
        if with_lse:
            o, lse = o
            lse_blocks[:, :, i].copy_(lse)
        o_blocks[:, :, i].copy_(o)

    def finish():
        out.rows.index_copy_(0, q_rows, o_blocks.view(-1, d))
        if with_lse:
            out.lse.view(-1).index_copy_(0, q_rows, lse_blocks.view(-1))

    return [functools.partial(whole_block, i) for i in range(nb)], finish


def _block_tasks(fn, block_tokens, block_valid):
    """``fn(i, q_tokens)`` for every query block ``i`` (not the null block), with its valid tokens."""
    return [functools.partial(fn, i, block_tokens[i] if block_valid is None else block_tokens[i][block_valid[i]])
            for i in range(block_tokens.shape[0] - 1)]


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


def _packed_block_outputs(out, q, k, v, block_tokens, block_valid, selection, text_index, key_mask, scale):
    """Per query block tasks, each (batch, head) row's keys packed to its valid tokens."""
    b, s, h, d = q.shape
    with_lse = out.lse is not None
    bh = b * h
    nb = block_tokens.shape[0] - 1
    q_rows, k_rows, v_rows = q.view(-1, d), k.view(-1, d), v.view(-1, d)
    row_base = head_base(b, s, h)  # a token adds h rows
    batch_of = torch.arange(bh) // h
    n_text = text_index.numel()
    sel = selection.reshape(bh, nb, -1)

    def query_block(i, q_tok):
        tok = block_tokens.index_select(0, sel[:, i].reshape(-1)).view(bh, -1)  # [BH, n_sel * P]
        val = block_valid.index_select(0, sel[:, i].reshape(-1)).view(bh, -1)
        lengths = val.sum(-1)
        width = int(lengths.max())
        # pack each row's valid tokens to its front (a scatter by running count, O(n))
        slot = (val.cumsum(-1) - 1).masked_fill_(~val, width)
        packed = torch.zeros(bh, width + 1, dtype=torch.int64).scatter_(1, slot, tok)[:, :width]
        for rows, n in _length_groups(lengths):
            g = rows.numel()
            base = row_base.index_select(0, rows)[:, None]
            tokens = packed.index_select(0, rows)[:, :n]
            keys = (base + tokens * h).reshape(-1)
            kg, vg = k_rows.index_select(0, keys).view(g, n, d), v_rows.index_select(0, keys).view(g, n, d)
            row_mask = None if key_mask is None else key_mask.index_select(0, batch_of.index_select(0, rows))
            keep = None
            if bool((lengths.index_select(0, rows) < n).any()) or key_mask is not None:
                keep = torch.arange(n)[None, :] < lengths.index_select(0, rows)[:, None]
                if row_mask is not None:
                    keep = keep & row_mask.gather(1, tokens)
            if n_text:
                t_rows = (base + text_index[None, :] * h).reshape(-1)
                kg = torch.cat([kg, k_rows.index_select(0, t_rows).view(g, n_text, d)], dim=1)
                vg = torch.cat([vg, v_rows.index_select(0, t_rows).view(g, n_text, d)], dim=1)
                if keep is not None:
                    t_keep = (row_mask.index_select(1, text_index) if row_mask is not None
                              else torch.ones(g, n_text, dtype=torch.bool))
                    keep = torch.cat([keep, t_keep], dim=1)
            q_out = (base + q_tok[None, :] * h).reshape(-1)
            qg = q_rows.index_select(0, q_out).view(g, 1, -1, d)
            mask = None if keep is None else keep[:, None, None, :]
            o = _sdpa_heads(qg, kg[:, None], vg[:, None], mask, scale, may_have_empty_rows=key_mask is not None,
                            with_lse=with_lse)
            out.put_rows(q_out, *(o if with_lse else (o,)))

    return _block_tasks(query_block, block_tokens, block_valid), None
