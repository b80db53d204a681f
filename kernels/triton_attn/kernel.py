"""Device code: a lookup-table-driven flash-attention forward over 3D token blocks.

One program computes one query block (a 3D box of ``QT x QH x QW`` video tokens, or a run of
text tokens) for one (batch, head). It walks three key sets, keeping the running max ``m``,
the running sum ``l`` and the fp32 accumulator of online softmax (Dao et al.,
FlashAttention 1/2), with ``log2(e)`` folded into the scale so that ``exp2`` is used:

1. the fully kept key blocks of its row of the block mask - no mask at all
   (``IS_FULL_BLOCKS``, as in FlexAttention's template);
2. the partly kept key blocks - the token mask is computed here from token coordinates:
   NATTEN-rule window tables per axis (``MASK_MODE = 0``) or the block selection of a
   block-sparse pattern (``MASK_MODE = 1``);
3. the text keys (global), ``BLOCK_N`` at a time;
4. with a far field (``HAS_FAR``, compiled only then), the pooled keys of the block's row of
   the far tables, ``BLOCK_N`` at a time, with their additive ``log2(count)`` bias (``-inf``
   for boxes the key mask empties): first the boxes every row sees, unmasked; then
   (far box, query box) pairs for the boxes only some rows see, which a row keeps iff the
   pair's query box is its own pool box (computed from its coordinates). With sinks
   (``HAS_SINKS``) the pooled keys and their bias are per (batch, head), since each head's
   sinks leave their boxes' means and counts;
5. with sinks (``HAS_SINKS``, compiled only then), the (batch, head)'s sink keys, read from
   K and V at their token indices (the launcher lists their pool box coordinates beside them:
   no integer division in the loop), ``BLOCK_N`` at a time, for video rows only: a row keeps a
   sink iff its pool box is not near the sink's box. The near relation is the AND of one
   relation per axis (it factorises as the exact mask does), and per axis the key boxes near
   a query box are one range (``dit_sparse.farfield.near_box_ranges``), so each row loads
   three ``[lo, hi]`` box ranges once and the check is three range tests, like the window
   test of step 2: no gathered ``[BLOCK_M, BLOCK_N]`` table loads in the loop.

Block-sparse patterns (``MASK_MODE = 1``) choose their key blocks per (batch, head), so their
far field is per (batch, head) too: the far lists of step 4 have one row per (batch * head,
query block), and a pair's query box is a block of the pattern (the row's own pattern block,
``pq``, is what it compares). Their sinks (step 5) take a ``[B * H, pattern blocks, N]``
int32 table of whether each sink's box is near each pattern block (a gathered load: sinks are
few), since near is a property of the data-dependent selection, not of per-axis ranges.

Token coordinates come from the block index and the offset inside the block, so tokens stay
in diffusers' natural order: no permutation pass. Rows whose every key is masked return 0.
"""

import triton
import triton.language as tl


@triton.jit
def _block_coords(blk, NB_H, NB_W, BT: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    """Grid coordinates of the ``BT*BH*BW`` slots of 3D block ``blk`` (T-major)."""
    r = tl.arange(0, BT * BH * BW)
    bt = blk // (NB_H * NB_W)
    bh = (blk // NB_W) % NB_H
    bw = blk % NB_W
    ct = bt * BT + r // (BH * BW)
    ch = bh * BH + (r // BW) % BH
    cw = bw * BW + r % BW
    return ct, ch, cw


@triton.jit
def _scores(q, K, V, k_off, k_load_mask, qk_scale, offs_d, stride_ks, stride_vs,
            HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    """Load a block of keys and values; return the scaled (log2-domain) scores and values."""
    d_mask = offs_d[None, :] < HEAD_DIM
    k = tl.load(K + k_off[:, None] * stride_ks + offs_d[None, :], mask=k_load_mask[:, None] & d_mask, other=0.0)
    v = tl.load(V + k_off[:, None] * stride_vs + offs_d[None, :], mask=k_load_mask[:, None] & d_mask, other=0.0)
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    return qk, v


@triton.jit
def _update(acc, l_i, m_i, qk, v, PRECISION: tl.constexpr):
    """One online-softmax step; rows with no key so far keep m = -inf and contribute 0."""
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _in_window(kc, qc, lo, hi, DIL, HAS_DILATION: tl.constexpr):
    """``[BLOCK_M, BLOCK_N]`` bool: key coordinate inside the query's window on one axis."""
    inside = (kc[None, :] - lo[:, None]).to(tl.uint32) <= (hi - lo)[:, None].to(tl.uint32)
    if HAS_DILATION:
        inside = inside & ((kc[None, :] % DIL) == (qc[:, None] % DIL))
    return inside


@triton.jit
def sparse_attention_fwd(
    Q, K, V, O, KM,
    KV_NUM, KV_IDX, FULL_NUM, FULL_IDX,
    WIN, SEL,
    KP, VP, LC, FAR_FULL_NUM, FAR_FULL_IDX, FAR_NUM, FAR_IDX, FAR_QBOX,
    SINK, NEAR,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    stride_kmb,
    stride_pb, stride_ps, stride_ph,
    qk_scale,
    HEADS, GT, GH, GW,
    TEXT_LEN, TEXT_START, VIDEO_START,
    NQ, NVQ, MAXK_P, MAXK_F,
    NQB_H, NQB_W, NKB_H, NKB_W,
    DIL_T, DIL_H, DIL_W,
    SEL_NB, SEL_NB_H, SEL_NB_W, PB_T, PB_H, PB_W,
    MAXF_F, MAXF_P, POOL_T, POOL_H, POOL_W, NBX_T, NBX_H, NBX_W,
    N_SINKS,
    QT: tl.constexpr, QH: tl.constexpr, QW: tl.constexpr,
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    LUT_PER_HEAD: tl.constexpr, MASK_MODE: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
    HAS_DILATION: tl.constexpr, HAS_FAR: tl.constexpr, HAS_SINKS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    BLOCK_M: tl.constexpr = QT * QH * QW
    BLOCK_N: tl.constexpr = KT * KH * KW
    pid_m = tl.program_id(0)
    pid_z = tl.program_id(1)
    b = pid_z // HEADS
    h = pid_z % HEADS

    # --- query rows: a 3D video block, or a run of text tokens --------------------------
    is_video_q = pid_m < NVQ
    qt, qh, qw = _block_coords(tl.minimum(pid_m, NVQ - 1), NQB_H, NQB_W, QT, QH, QW)
    text_row = (pid_m - NVQ) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_valid = tl.where(is_video_q, (qt < GT) & (qh < GH) & (qw < GW), (text_row >= 0) & (text_row < TEXT_LEN))
    q_tok = tl.where(is_video_q, VIDEO_START + (qt * GH + qh) * GW + qw, TEXT_START + text_row)
    q_tok = tl.where(q_valid, q_tok, 0).to(tl.int64)
    # The row's pool box (the far loop's per-row check; -1 for padded rows).
    q_box = tl.where(q_valid, ((qt // POOL_T) * NBX_H + qh // POOL_H) * NBX_W + qw // POOL_W, -1)

    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d[None, :] < HEAD_DIM
    Qb = Q + b.to(tl.int64) * stride_qb + h * stride_qh
    Kb = K + b.to(tl.int64) * stride_kb + h * stride_kh
    Vb = V + b.to(tl.int64) * stride_vb + h * stride_vh
    q = tl.load(Qb + q_tok[:, None] * stride_qs + offs_d[None, :], mask=q_valid[:, None] & d_mask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    z_lut = pid_z if LUT_PER_HEAD else 0
    row = z_lut * NQ + pid_m

    # --- 1. fully kept key blocks: no mask -------------------------------------------------
    n_full = tl.load(FULL_NUM + row)
    for j in range(0, n_full):
        kb = tl.load(FULL_IDX + row * MAXK_F + j)
        kt, kh, kw = _block_coords(kb, NKB_H, NKB_W, KT, KH, KW)
        k_tok = (VIDEO_START + (kt * GH + kh) * GW + kw).to(tl.int64)
        qk, v = _scores(q, Kb, Vb, k_tok, k_tok >= 0, qk_scale, offs_d, stride_ks, stride_vs, HEAD_DIM, PRECISION)
        if HAS_KEY_MASK:
            km = tl.load(KM + b * stride_kmb + k_tok) != 0
            qk = tl.where(km[None, :], qk, float("-inf"))
        acc, l_i, m_i = _update(acc, l_i, m_i, qk, v, PRECISION)

    # --- 2. partly kept key blocks: token mask from coordinates -------------------------
    if MASK_MODE == 0:
        lo_t = tl.load(WIN + qt, mask=q_valid, other=0)
        hi_t = tl.load(WIN + GT + qt, mask=q_valid, other=0)
        lo_h = tl.load(WIN + 2 * GT + qh, mask=q_valid, other=0)
        hi_h = tl.load(WIN + 2 * GT + GH + qh, mask=q_valid, other=0)
        lo_w = tl.load(WIN + 2 * GT + 2 * GH + qw, mask=q_valid, other=0)
        hi_w = tl.load(WIN + 2 * GT + 2 * GH + GW + qw, mask=q_valid, other=0)
    else:
        pq = ((qt // PB_T) * SEL_NB_H + qh // PB_H) * SEL_NB_W + qw // PB_W
    n_part = tl.load(KV_NUM + row)
    for j in range(0, n_part):
        kb = tl.load(KV_IDX + row * MAXK_P + j)
        kt, kh, kw = _block_coords(kb, NKB_H, NKB_W, KT, KH, KW)
        k_valid = (kt < GT) & (kh < GH) & (kw < GW)
        k_tok = tl.where(k_valid, VIDEO_START + (kt * GH + kh) * GW + kw, 0).to(tl.int64)
        qk, v = _scores(q, Kb, Vb, k_tok, k_valid, qk_scale, offs_d, stride_ks, stride_vs, HEAD_DIM, PRECISION)
        if MASK_MODE == 0:
            keep = (_in_window(kt, qt, lo_t, hi_t, DIL_T, HAS_DILATION)
                    & _in_window(kh, qh, lo_h, hi_h, DIL_H, HAS_DILATION)
                    & _in_window(kw, qw, lo_w, hi_w, DIL_W, HAS_DILATION))
        else:
            pk = ((kt // PB_T) * SEL_NB_H + kh // PB_H) * SEL_NB_W + kw // PB_W
            keep = tl.load(SEL + pid_z.to(tl.int64) * SEL_NB * SEL_NB + pq[:, None] * SEL_NB + pk[None, :],
                           mask=q_valid[:, None] & k_valid[None, :], other=0) != 0
        keep = (keep | (pid_m >= NVQ)) & k_valid[None, :]
        if HAS_KEY_MASK:
            km = tl.load(KM + b * stride_kmb + k_tok, mask=k_valid, other=0) != 0
            keep = keep & km[None, :]
        qk = tl.where(keep, qk, float("-inf"))
        acc, l_i, m_i = _update(acc, l_i, m_i, qk, v, PRECISION)

    # --- 3. text keys: global ----------------------------------------------------------------
    for start in range(0, TEXT_LEN, BLOCK_N):
        c = start + tl.arange(0, BLOCK_N)
        k_valid = c < TEXT_LEN
        k_tok = tl.where(k_valid, TEXT_START + c, 0).to(tl.int64)
        keep = k_valid
        if HAS_KEY_MASK:
            keep = keep & (tl.load(KM + b * stride_kmb + k_tok, mask=k_valid, other=0) != 0)
        qk, v = _scores(q, Kb, Vb, k_tok, k_valid, qk_scale, offs_d, stride_ks, stride_vs, HEAD_DIM, PRECISION)
        qk = tl.where(keep[None, :], qk, float("-inf"))
        acc, l_i, m_i = _update(acc, l_i, m_i, qk, v, PRECISION)

    # --- 4. far field: pooled keys, log2(count) bias ---------------------------------------
    if HAS_FAR:
        KPb = KP + b.to(tl.int64) * stride_pb + h * stride_ph
        VPb = VP + b.to(tl.int64) * stride_pb + h * stride_ph
        if HAS_SINKS:
            LCb = LC + pid_z * (NBX_T * NBX_H * NBX_W)
        else:
            LCb = LC + b * (NBX_T * NBX_H * NBX_W)
        if MASK_MODE == 1:  # block-sparse: far lists per (batch * head, query block)
            far_row = row
            row_box = tl.where(q_valid, pq, -1)
        else:
            far_row = pid_m
            row_box = q_box
        n_far_full = tl.load(FAR_FULL_NUM + far_row)
        for start in range(0, n_far_full, BLOCK_N):
            c = start + tl.arange(0, BLOCK_N)
            f_valid = c < n_far_full
            f = tl.load(FAR_FULL_IDX + far_row * MAXF_F + c, mask=f_valid, other=0)
            qk, v = _scores(q, KPb, VPb, f, f_valid, qk_scale, offs_d, stride_ps, stride_ps, HEAD_DIM, PRECISION)
            qk = qk + tl.load(LCb + f, mask=f_valid, other=float("-inf"))[None, :]
            acc, l_i, m_i = _update(acc, l_i, m_i, qk, v, PRECISION)
        n_far = tl.load(FAR_NUM + far_row)
        for start in range(0, n_far, BLOCK_N):
            c = start + tl.arange(0, BLOCK_N)
            f_valid = c < n_far
            f = tl.load(FAR_IDX + far_row * MAXF_P + c, mask=f_valid, other=0)
            f_q_box = tl.load(FAR_QBOX + far_row * MAXF_P + c, mask=f_valid, other=-2)
            qk, v = _scores(q, KPb, VPb, f, f_valid, qk_scale, offs_d, stride_ps, stride_ps, HEAD_DIM, PRECISION)
            qk = qk + tl.load(LCb + f, mask=f_valid, other=float("-inf"))[None, :]
            qk = tl.where(row_box[:, None] == f_q_box[None, :], qk, float("-inf"))
            acc, l_i, m_i = _update(acc, l_i, m_i, qk, v, PRECISION)

    # --- 5. sinks: exact far keys per (batch, head), unless near the row's pool box -------
    if HAS_SINKS:
        if MASK_MODE == 0:
            # The key boxes near the row's box form one range per axis: [lo, hi] per axis.
            r_bt = qt // POOL_T
            r_bh = qh // POOL_H
            r_bw = qw // POOL_W
            lo_bt = tl.load(NEAR + r_bt, mask=q_valid, other=0)
            hi_bt = tl.load(NEAR + NBX_T + r_bt, mask=q_valid, other=0)
            lo_bh = tl.load(NEAR + 2 * NBX_T + r_bh, mask=q_valid, other=0)
            hi_bh = tl.load(NEAR + 2 * NBX_T + NBX_H + r_bh, mask=q_valid, other=0)
            lo_bw = tl.load(NEAR + 2 * (NBX_T + NBX_H) + r_bw, mask=q_valid, other=0)
            hi_bw = tl.load(NEAR + 2 * (NBX_T + NBX_H) + NBX_W + r_bw, mask=q_valid, other=0)
        else:
            # [B * H, pattern blocks, N] int32: 1 where the sink's box is near the pattern block.
            NEARb = NEAR + pid_z.to(tl.int64) * SEL_NB * N_SINKS
        n_sink = tl.where(is_video_q, N_SINKS, 0)
        SINKb = SINK + pid_z.to(tl.int64) * 4 * N_SINKS  # rows: token, box t, box h, box w
        for start in range(0, n_sink, BLOCK_N):
            c = start + tl.arange(0, BLOCK_N)
            c_valid = c < n_sink
            s_tok = tl.load(SINKb + c, mask=c_valid, other=-1)  # video token, -1: no sink
            s_valid = s_tok >= 0
            s_tok = tl.where(s_valid, s_tok, 0)
            if MASK_MODE == 0:
                near = (_in_window(tl.load(SINKb + N_SINKS + c, mask=c_valid, other=0), qt, lo_bt, hi_bt, 1, False)
                        & _in_window(tl.load(SINKb + 2 * N_SINKS + c, mask=c_valid, other=0), qh, lo_bh, hi_bh, 1,
                                     False)
                        & _in_window(tl.load(SINKb + 3 * N_SINKS + c, mask=c_valid, other=0), qw, lo_bw, hi_bw, 1,
                                     False))
            else:
                near = tl.load(NEARb + pq[:, None] * N_SINKS + c[None, :], mask=q_valid[:, None] & c_valid[None, :],
                               other=1) != 0
            k_tok = (VIDEO_START + s_tok).to(tl.int64)
            qk, v = _scores(q, Kb, Vb, k_tok, s_valid, qk_scale, offs_d, stride_ks, stride_vs, HEAD_DIM, PRECISION)
            qk = tl.where(near | ~s_valid[None, :], float("-inf"), qk)
            acc, l_i, m_i = _update(acc, l_i, m_i, qk, v, PRECISION)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    Ob = O + b.to(tl.int64) * stride_ob + h * stride_oh
    tl.store(Ob + q_tok[:, None] * stride_os + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=q_valid[:, None] & d_mask)
