"""Host side of the Triton kernel: checks, allocation, grid, strides, and the AOT compile.

Takes plain tensors and integers only (the block-mask tables are built by the caller).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from .configs import get_config, head_dim_bucket

LOG2E = 1.4426950408889634
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
_TRITON_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def kernel_config(dtype: torch.dtype, head_dim: int, far: bool = False, sinks: bool = False, block: bool = False):
    return get_config(_DTYPE_NAMES[dtype], head_dim, far, sinks, block)


def launch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    key_mask: Optional[torch.Tensor],
    kv_num: torch.Tensor, kv_idx: torch.Tensor, full_num: torch.Tensor, full_idx: torch.Tensor,
    windows: Optional[torch.Tensor], selection: Optional[torch.Tensor],
    *,
    grid: Tuple[int, int, int], text_len: int, text_start: int, video_start: int,
    num_video_q_blocks: int, num_q_blocks: int,
    q_block: Tuple[int, int, int], kv_block: Tuple[int, int, int],
    dilation: Tuple[int, int, int] = (1, 1, 1),
    selection_block: Tuple[int, int, int] = (1, 1, 1),
    far_keys: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
    far_lut: Optional[Tuple[torch.Tensor, ...]] = None,
    pool: Tuple[int, int, int] = (1, 1, 1), boxes: Tuple[int, int, int] = (1, 1, 1),
    sinks: Optional[torch.Tensor] = None, near_ranges: Optional[torch.Tensor] = None,
    sink_near: Optional[torch.Tensor] = None,
    scale: float, num_warps: int = 4, num_stages: int = 2,
) -> torch.Tensor:
    """Run the kernel. q, k, v: ``[B, S, H, D]`` (last dim contiguous); returns ``[B, S, H, D]``.

    ``windows`` is the int32 concatenation ``lo_t, hi_t, lo_h, hi_h, lo_w, hi_w`` (neighborhood
    masks); ``selection`` the ``[Z, nb, nb]`` int8 block selection (block-sparse masks); exactly
    one of them. LUTs are ``[Z, NQ]`` / ``[Z, NQ, width]`` int32 with ``Z`` 1 or ``B * H``.

    A far field is ``far_keys = (kp, vp, log_count)``: pooled keys and values
    ``[B, nb, H, D]`` in q's dtype and the natural-log bias ``[B, nb]`` float32; and
    ``far_lut = (full_num, full_idx, num, idx, query_boxes)``: the ``[1, NQ]`` /
    ``[1, NQ, width]`` int32 lists of ``dit_sparse.blockmask.FarBlocks``, over ``boxes`` pool
    boxes per axis of ``pool`` tokens. With a block selection (block-sparse patterns) the lists
    are ``[B * H, NQ]`` / ``[B * H, NQ, width]`` and ``query_boxes`` holds blocks of
    ``selection_block`` (a row compares its own).

    Far-field sinks (with a far field only) are ``sinks``: ``[B, H, N]`` integer video token
    indices (0 = the first video token) of every (batch, head)'s sink keys, ``-1`` for none;
    and ``near_ranges``: the int32 concatenation ``lo_t, hi_t, lo_h, hi_h, lo_w, hi_w``
    (``[boxes[a]]`` each) of ``dit_sparse.farfield.near_box_ranges``: per axis, the key boxes
    near each query box; a row sees a sink iff the sink's box is outside its box's range on
    some axis. With sinks the pooled keys are per head: ``log_count`` is ``[B, H, nb]``. With
    a block selection, ``sink_near`` replaces ``near_ranges``: ``[B * H, n_sel, N]`` int32, 1
    where sink ``n``'s box is near selection block ``p`` (the row sees it iff 0).
    """
    from .kernel import sparse_attention_fwd

    b, s, h, d = q.shape
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("q, k, v must have a contiguous last (head_dim) dimension")
    if (far_keys is None) != (far_lut is None):
        raise ValueError("far_keys and far_lut come together (a far field needs both)")
    if windows is not None and ((sinks is None) != (near_ranges is None) or sink_near is not None):
        raise ValueError("sinks and near_ranges come together (sink keys need the near box ranges); "
                         "sink_near is for a block selection")
    if selection is not None and ((sinks is None) != (sink_near is None) or near_ranges is not None):
        raise ValueError("sinks and sink_near come together with a block selection (sink keys need their "
                         "near table); near_ranges is for window masks")
    if sinks is not None and far_keys is None:
        raise ValueError("sinks run with a far field only (far_keys and far_lut)")
    out = torch.empty_like(q)
    mask_mode = 0 if windows is not None else 1
    dummy = torch.zeros(1, dtype=torch.int32, device=q.device)
    km = key_mask.to(torch.int8).contiguous() if key_mask is not None else dummy.to(torch.int8)
    sel_nb = sel_nb_h = sel_nb_w = 1
    if selection is not None:
        sel_axes = [-(-n // p) for n, p in zip(grid, selection_block)]
        sel_nb, sel_nb_h, sel_nb_w = math.prod(sel_axes), sel_axes[1], sel_axes[2]
    nqb = [-(-n // p) for n, p in zip(grid, q_block)]
    nkb = [-(-n // p) for n, p in zip(grid, kv_block)]
    lut_per_head = kv_num.shape[0] > 1
    if far_keys is not None:
        kp, vp, log_count = far_keys
        nb = math.prod(boxes)
        lc_shape, lc_name = ((b, h, nb), "[B, H, nb] (with sinks)") if sinks is not None else ((b, nb), "[B, nb]")
        if kp.shape != (b, nb, h, d) or vp.shape != kp.shape or log_count.shape != lc_shape:
            raise ValueError(f"far_keys shapes kp={tuple(kp.shape)}, vp={tuple(vp.shape)}, "
                             f"log_count={tuple(log_count.shape)} must be [B, nb, H, D] x2 and {lc_name} "
                             f"with B={b}, nb={nb} (boxes={boxes}), H={h}, D={d}")
        kp, vp = kp.to(q.dtype).contiguous(), vp.to(q.dtype).contiguous()
        bias = (log_count.float() * LOG2E).contiguous()  # the kernel's scores are in log2 units
        far_full_num, far_full_idx, far_num, far_idx, far_qbox = far_lut
        z_far = b * h if selection is not None else 1
        if far_full_num.shape[0] != z_far or far_num.shape[0] != z_far:
            raise ValueError(f"far_lut leading dimensions {far_full_num.shape[0]}, {far_num.shape[0]} must be "
                             f"{z_far} ({'B * H with a block selection' if selection is not None else '1'})")
        pooled_strides = (kp.stride(0), kp.stride(1), kp.stride(2))
    else:
        kp = vp = dummy.to(q.dtype)
        bias = dummy.float()
        far_full_num = far_full_idx = far_num = far_idx = far_qbox = dummy
        pooled_strides = (0, 0, 0)
    if sinks is not None:
        if sinks.dim() != 3 or tuple(sinks.shape[:2]) != (b, h) or sinks.shape[2] < 1:
            raise ValueError(f"sinks shape {tuple(sinks.shape)} must be [B, H, N] with B={b}, H={h}, N >= 1")
        if sinks.dtype.is_floating_point or sinks.dtype == torch.bool:
            raise TypeError(f"sinks.dtype={sinks.dtype} must be an integer type (video token indices)")
        if selection is not None:
            want = (b * h, sel_nb, sinks.shape[2])
            if sink_near.dtype != torch.int32 or tuple(sink_near.shape) != want:
                raise ValueError(f"sink_near must be int32 [B * H, n_sel, N] = {list(want)}, "
                                 f"got {sink_near.dtype} {list(sink_near.shape)}")
            near_ranges = sink_near
        else:
            n_near = 2 * sum(boxes)
            if near_ranges.dtype != torch.int32 or near_ranges.numel() != n_near:
                raise ValueError(f"near_ranges must be int32 with 2 * sum(boxes={boxes}) = {n_near} elements, "
                                 f"got {near_ranges.dtype} with {near_ranges.numel()}")
        # Each sink's pool box coordinates beside its token: [B, H, 4, N] (token, box t, h, w).
        tok = sinks.long()
        coords = (tok // (grid[1] * grid[2]) // pool[0], tok // grid[2] % grid[1] // pool[1], tok % grid[2] // pool[2])
        sink_tok = torch.stack([tok.clamp(min=-1), *coords], dim=2).to(torch.int32).contiguous()
        near = near_ranges.contiguous()
        n_sinks = sinks.shape[2]
    else:
        sink_tok, near, n_sinks = dummy, dummy, 0
    sparse_attention_fwd[(num_q_blocks, b * h)](
        q, k, v, out, km,
        kv_num, kv_idx, full_num, full_idx,
        windows if windows is not None else dummy,
        selection if selection is not None else dummy.to(torch.int8),
        kp, vp, bias, far_full_num, far_full_idx, far_num, far_idx, far_qbox,
        sink_tok, near,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        km.stride(0) if key_mask is not None else 0,
        *pooled_strides,
        scale * LOG2E,
        h, grid[0], grid[1], grid[2],
        text_len, text_start, video_start,
        num_q_blocks, num_video_q_blocks, kv_idx.shape[-1], full_idx.shape[-1],
        nqb[1], nqb[2], nkb[1], nkb[2],
        dilation[0], dilation[1], dilation[2],
        sel_nb, sel_nb_h, sel_nb_w, selection_block[0], selection_block[1], selection_block[2],
        far_full_idx.shape[-1], far_idx.shape[-1], pool[0], pool[1], pool[2], boxes[0], boxes[1], boxes[2],
        n_sinks,
        QT=q_block[0], QH=q_block[1], QW=q_block[2],
        KT=kv_block[0], KH=kv_block[1], KW=kv_block[2],
        HEAD_DIM=d, BLOCK_D=head_dim_bucket(d),
        LUT_PER_HEAD=lut_per_head, MASK_MODE=mask_mode, HAS_KEY_MASK=key_mask is not None,
        HAS_DILATION=max(dilation) > 1, HAS_FAR=far_keys is not None, HAS_SINKS=sinks is not None,
        PRECISION="tf32",
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


_POINTER_ARGS = ("Q", "K", "V", "O", "KP", "VP")
_INT32_POINTERS = ("KV_NUM", "KV_IDX", "FULL_NUM", "FULL_IDX", "WIN",
                   "FAR_FULL_NUM", "FAR_FULL_IDX", "FAR_NUM", "FAR_IDX", "FAR_QBOX", "SINK", "NEAR")
_INT_ARGS = (
    "stride_qb", "stride_qs", "stride_qh", "stride_kb", "stride_ks", "stride_kh",
    "stride_vb", "stride_vs", "stride_vh", "stride_ob", "stride_os", "stride_oh", "stride_kmb",
    "HEADS", "GT", "GH", "GW", "TEXT_LEN", "TEXT_START", "VIDEO_START",
    "NQ", "NVQ", "MAXK_P", "MAXK_F", "NQB_H", "NQB_W", "NKB_H", "NKB_W",
    "DIL_T", "DIL_H", "DIL_W", "SEL_NB", "SEL_NB_H", "SEL_NB_W", "PB_T", "PB_H", "PB_W",
    "stride_pb", "stride_ps", "stride_ph",
    "MAXF_F", "MAXF_P", "POOL_T", "POOL_H", "POOL_W", "NBX_T", "NBX_H", "NBX_W", "N_SINKS",
)

_ALIGNED_INTS = ("stride_qb", "stride_qs", "stride_qh", "stride_kb", "stride_ks", "stride_kh",
                 "stride_vb", "stride_vs", "stride_vh", "stride_ob", "stride_os", "stride_oh",
                 "stride_pb", "stride_ps", "stride_ph")


def block_shape(tokens: int, prefer: Sequence[int] = (1, 8, 8)) -> Tuple[int, int, int]:
    """A 3D block of ``tokens`` (a power of two) slots: doubles W, then H, then T up to
    ``prefer`` (rounded up to powers of two), then doubles the axis furthest below its cap
    (T first on ties: a cube-like block suits 3D windows)."""
    caps = [1 << max(0, int(p - 1).bit_length()) for p in prefer]
    shape = [1, 1, 1]
    while math.prod(shape) < tokens:
        for axis in (2, 1, 0):
            if shape[axis] < caps[axis]:
                shape[axis] *= 2
                break
        else:
            axis = min((0, 1, 2), key=lambda a: shape[a] / caps[a])
            shape[axis] *= 2
    return tuple(shape)  # type: ignore[return-value]


def aot_compile(dtype_name: str, head_dim: int, arch: int, *, mask_mode: int = 0, key_mask: bool = False,
                far: bool = False, sinks: bool = False, config=None, q_block=None, kv_block=None):
    """Compile the kernel ahead of time for ``sm_<arch>`` without a GPU; returns the
    ``CompiledKernel`` (``.asm['ptx']``, ``.asm['cubin']``, ``.metadata.shared``). ``far``
    compiles the far-field loop in (window masks with ``mask_mode=0``, a block selection with
    ``mask_mode=1``), ``sinks`` also the sink loop."""
    import triton
    from triton.backends.compiler import GPUTarget

    from .kernel import sparse_attention_fwd

    if sinks and not far:
        raise ValueError("sinks=True needs far=True (sinks are part of a far field)")
    cfg = config or get_config(dtype_name, head_dim, far, sinks, block=mask_mode == 1)
    q_block = q_block or block_shape(cfg.block_m)
    kv_block = kv_block or block_shape(cfg.block_n)
    ty = _TRITON_TYPES[dtype_name]
    signature = {name: f"*{ty}" for name in _POINTER_ARGS}
    signature["KM"] = "*i8"
    signature.update({name: "*i32" for name in _INT32_POINTERS})
    signature["SEL"] = "*i8"
    signature["LC"] = "*fp32"
    signature.update({name: "i32" for name in _INT_ARGS})
    signature["qk_scale"] = "fp32"
    constexprs = {
        "QT": q_block[0], "QH": q_block[1], "QW": q_block[2],
        "KT": kv_block[0], "KH": kv_block[1], "KW": kv_block[2],
        "HEAD_DIM": head_dim, "BLOCK_D": head_dim_bucket(head_dim),
        "LUT_PER_HEAD": mask_mode == 1, "MASK_MODE": mask_mode, "HAS_KEY_MASK": key_mask,
        "HAS_DILATION": False, "HAS_FAR": far, "HAS_SINKS": sinks,
        "PRECISION": "tf32",
    }
    signature.update({name: "constexpr" for name in constexprs})
    # What the JIT infers on a GPU for the usual shapes: 16-byte aligned tensors, and row
    # strides (heads * head_dim) and head strides (head_dim) that are multiples of 16.
    names = sparse_attention_fwd.arg_names
    aligned = (*_POINTER_ARGS, *_ALIGNED_INTS)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = triton.compiler.ASTSource(fn=sparse_attention_fwd, signature=signature, constexprs=constexprs,
                                    attrs=attrs)
    target = GPUTarget("cuda", arch, 32)
    return triton.compile(src, target=target, options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
