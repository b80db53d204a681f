"""The op: ``sparse_attention`` and its float64 reference, backend choice, speed estimates.

Backends: an ordered table (:data:`BACKEND_TABLE`) of :class:`Backend` entries, each with a
name, a ``why_not`` predicate (None when it can run a call, else the reason), a ``prepare``
step (the cached tables of a (pattern, layout)) and ``run``. :func:`choose_backend` runs the
requested one if it can, else walks the table in order and takes the first that can run the
call automatically; its error lists every backend tried and why each could not run.

* ``"xformers"`` - xformers' memory-efficient kernel, for dense calls (``Full``, no key mask)
  on CUDA tensors, when the optional ``gpu`` extra is installed.
* ``"triton"`` - the block-mask flash-attention kernel of ``dit_sparse.kernels.triton_attn``
  on CUDA tensors, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``,
  which is how it is tested here; chosen automatically only on CUDA).
* ``"cpu"`` - gathered groups on PyTorch's fused SDPA (``dit_sparse.kernels.cpu``); it runs
  wherever PyTorch's SDPA runs, CUDA tensors included.

The kernels are wrapped as one torch custom op (``dit_sparse::sparse_attention``), so that
``torch.compile`` treats a call as one opaque node instead of breaking the graph.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import torch

from . import env
from .blockmask import block_sparse_block_mask, static_block_mask
from .layout import TokenLayout
from .patterns import BlockSparse, Full, Neighborhood, Pattern, parse_pattern
from .tiling import BlockGrid, block_sparse_select, tiling_for

BACKENDS = ("xformers", "triton", "cpu")  # the names of BACKEND_TABLE, in its order
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def _check_inputs(q, k, v, pattern, layout, key_mask, scale, backend):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, S, heads, head_dim] (4 dims), got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}.dtype={t.dtype} is not supported; allowed: float32, float16, bfloat16")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v shapes must match, got q={tuple(q.shape)}, k={tuple(k.shape)}, v={tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes must match, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern={pattern!r} must be a dit_sparse pattern (Full, Neighborhood, SlidingTile, BlockSparse)")
    if not isinstance(layout, TokenLayout):
        raise TypeError(f"layout={layout!r} must be a dit_sparse.TokenLayout")
    b, s, _, d = q.shape
    if s != layout.seq_len:
        raise ValueError(f"sequence length S={s} does not match layout (text_len={layout.text_len} + "
                         f"T*H*W={layout.video_len} for grid={layout.grid} = {layout.seq_len})")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim={d} exceeds the supported maximum {MAX_HEAD_DIM}")
    if key_mask is not None:
        if not isinstance(key_mask, torch.Tensor) or key_mask.dtype != torch.bool:
            raise TypeError(f"key_mask must be a bool tensor [B, S], got {getattr(key_mask, 'dtype', type(key_mask))}")
        if tuple(key_mask.shape) != (b, s):
            raise ValueError(f"key_mask shape {tuple(key_mask.shape)} must be [B, S] = {(b, s)}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
        raise ValueError(f"scale={scale!r} must be a positive float or None")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; allowed: None (by device), {', '.join(map(repr, BACKENDS))}")


def _why_not_triton(q: torch.Tensor, pattern: Optional[Pattern] = None, key_mask=None) -> Optional[str]:
    if q.device.type == "cpu" and not env.triton_interpret():
        return "on CPU tensors it needs the Triton interpreter (set TRITON_INTERPRET=1 before importing triton)"
    if q.device.type not in ("cpu", "cuda"):
        return f"it does not run on device {q.device}"
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - triton is a dependency
        return "triton is not installed"
    if pattern is not None and not isinstance(pattern, BlockSparse) and pattern.far is not None and pattern.far.sinks:
        from .farfield import sink_ranges_exact

        if not sink_ranges_exact(pattern):
            return (f"its sink check needs dilation 1 or <= pool on every axis, got dilation="
                    f"{pattern.dilation} and pool={pattern.far.pool} (pattern {pattern.spec!r})")
    return None


def _why_not_cpu(q: torch.Tensor, pattern: Optional[Pattern] = None, key_mask=None) -> Optional[str]:
    if q.device.type not in ("cpu", "cuda", "xpu", "mps"):
        return f"PyTorch's fused SDPA does not run on device {q.device}"
    return None


def _why_not_xformers(q: torch.Tensor, pattern: Optional[Pattern] = None, key_mask=None) -> Optional[str]:
    if q.device.type != "cuda":
        return f"it runs on CUDA tensors only, got {q.device}"
    if pattern is not None and not isinstance(pattern, Full):
        return "it runs dense attention only (pattern Full)"
    if key_mask is not None:
        return "it is not used with a key mask"
    if _xformers_ops() is None:
        return "xformers is not installed (the optional extra: pip install 'dit-sparse[gpu]')"
    return None


def can_run_triton(q: torch.Tensor, raise_error: bool = False, *, pattern: Optional[Pattern] = None,
                   key_mask=None) -> bool:
    """Triton runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``."""
    return _answer("triton", _why_not_triton(q, pattern, key_mask), raise_error)


def can_run_cpu(q: torch.Tensor, raise_error: bool = False, *, pattern: Optional[Pattern] = None,
                key_mask=None) -> bool:
    """The SDPA-based path runs wherever PyTorch's fused SDPA does (CPU, CUDA, XPU, MPS)."""
    return _answer("cpu", _why_not_cpu(q, pattern, key_mask), raise_error)


def _answer(name: str, reason: Optional[str], raise_error: bool) -> bool:
    if reason and raise_error:
        raise ValueError(f"backend={name!r} cannot run this call: {reason}")
    return reason is None


@dataclass(frozen=True)
class Backend:
    """One way to run :func:`sparse_attention`.

    ``why_not(q, pattern, key_mask)``: None when it can run the call, else the reason.
    ``prepare(pattern, layout, q, k, scale)``: what ``run`` needs; every backend today passes
    the (pattern, layout) on and takes its tables from per-(pattern, layout) caches in ``run``
    (nothing is rebuilt per call for static patterns).
    ``run(q, k, v, prepared, key_mask, scale)``: the ``[B, S, H, D]`` output.
    ``auto(q)``: whether :func:`choose_backend` may pick it when no backend is requested.
    """

    name: str
    why_not: Callable[..., Optional[str]]
    prepare: Callable[..., Any]
    run: Callable[..., torch.Tensor]
    auto: Callable[[torch.Tensor], bool]


def choose_backend(q: torch.Tensor, backend: Optional[str] = None, *, pattern: Optional[Pattern] = None,
                   key_mask=None) -> str:
    """The backend a call uses: the requested one, if it can run the call, else the first of
    :data:`BACKEND_TABLE` that runs automatically and can. Raises ValueError naming every
    backend tried and why it could not run."""
    if backend is not None:
        if backend not in _BY_NAME:
            raise ValueError(f"backend={backend!r} is unknown; allowed: None (by device), "
                             f"{', '.join(map(repr, BACKENDS))}")
        _answer(backend, _BY_NAME[backend].why_not(q, pattern, key_mask), raise_error=True)
        return backend
    tried = []
    for entry in BACKEND_TABLE:
        if not entry.auto(q):
            tried.append(f"{entry.name}: only when asked for on {q.device.type} tensors")
            continue
        reason = entry.why_not(q, pattern, key_mask)
        if reason is None:
            return entry.name
        tried.append(f"{entry.name}: {reason}")
    raise ValueError("no backend can run this call; tried " + "; ".join(tried))


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------


def reference_attention(q, k, v, pattern, layout, *, key_mask=None, scale=None, backend=None):
    """Dense masked attention in float64 (builds the ``S x S`` mask: for tests only).

    Same signature and result shape/dtype as :func:`sparse_attention`; ``backend`` is
    accepted for symmetry and ignored. Rows whose keys are all masked return 0.
    """
    _check_inputs(q, k, v, pattern, layout, key_mask, scale, backend)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if pattern.far is not None:
        from .farfield import reference_far_attention

        return reference_far_attention(q, k, v, pattern, layout, key_mask, scale)
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    mask = pattern.mask(layout, q, k).to(q.device)
    mask = mask.view((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :]
    scores = (qd @ kd.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = probs @ vd
    return out.transpose(1, 2).to(q.dtype)


# --------------------------------------------------------------------------------------
# The op
# --------------------------------------------------------------------------------------


def _encode(pattern: Pattern, layout: TokenLayout) -> str:
    # Both strings are made at construction, so that torch.compile sees constants here.
    return pattern.spec + "|" + layout.spec


@functools.lru_cache(maxsize=512)
def _decode(spec: str) -> Tuple[Pattern, TokenLayout]:
    pattern, layout = spec.split("|")
    return parse_pattern(pattern), TokenLayout.from_spec(layout)


def _text_range(layout: TokenLayout) -> Tuple[int, int]:
    return layout.text_start, layout.text_start + layout.text_len


@functools.lru_cache(maxsize=64)
def _block_sparse_tables(layout: TokenLayout, block: Tuple[int, int, int]):
    grid = BlockGrid(layout.grid, block)
    tokens, valid = grid.block_token_table()
    tokens = tokens + layout.video_start
    # Append the "null" block that pads variable-length selections.
    tokens = torch.cat([tokens, torch.zeros(1, tokens.shape[1], dtype=torch.int64)])
    valid = torch.cat([valid, torch.zeros(1, valid.shape[1], dtype=torch.bool)])
    return grid, tokens, valid


def _run_cpu(q, k, v, pattern, layout, key_mask, scale):
    from .kernels.cpu import attention as cpu

    if isinstance(pattern, Full):
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return cpu._sdpa(q, k, v, mask, scale, may_have_empty_rows=True)
    if isinstance(pattern, BlockSparse):
        with torch.inference_mode(False):  # cached tables: normal tensors, usable under autograd later
            grid, tokens, valid = _block_sparse_tables(layout, pattern.block)
        sel = block_sparse_select(pattern, layout, grid, q, k, scale)  # [B, H, nb, nb]
        counts = sel.sum(-1)
        width = int(counts.max())
        nb = grid.num_blocks
        order = torch.sort(sel.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :width]
        padded = torch.arange(width)[None, None, None, :] >= counts[..., None]
        selection = order.masked_fill(padded, nb)
        ragged = not bool(valid[:-1].all())
        needs_valid = ragged or bool(padded.any())
        text_index = torch.arange(*_text_range(layout), dtype=torch.int64)
        extra = None
        if pattern.far is not None:
            from .farfield import block_far_keys

            extra = _extra_arg(*block_far_keys(q, k, v, pattern, layout, sel, key_mask), layout)
        return cpu.block_sparse_attention(q, k, v, tokens, valid if needs_valid else None, selection,
                                          text_index, _text_range(layout), key_mask, scale,
                                          group_threads=env.cpu_group_threads(), extra=extra)
    with torch.inference_mode(False):  # cached tables: normal tensors, usable under autograd later
        tiling = tiling_for(pattern.exact_part(), layout)
        groups = tiling.kernel_groups(q.dtype)
    extra = None
    if pattern.far is not None:
        from .farfield import window_far_keys

        extra = _extra_arg(*window_far_keys(q, k, v, pattern, layout, key_mask), layout)
    return cpu.grouped_attention(q, k, v, groups, _text_range(layout), key_mask, scale, extra,
                                 group_threads=env.cpu_group_threads())


def _extra_arg(ke, ve, bias, token_class, layout: TokenLayout):
    """The CPU kernel's extra-keys argument (``kernels.cpu.attention.merge_extra_keys``): a far
    field's keys, values and per-class bias, the video query tokens ``(start, stop)`` and
    their classes (query box or block)."""
    return ke, ve, bias, (layout.video_start, layout.video_start + layout.video_len), token_class


def _preferred_tile(pattern: Pattern) -> Tuple[int, int, int]:
    """The 3D shape the kernels' token blocks follow for ``pattern``: its stride (a sliding
    tile's tile), a block-sparse pattern's block, else 1x8x8 (a frame's patch of rows)."""
    if isinstance(pattern, Neighborhood) and max(pattern.stride) > 1:
        return pattern.stride
    if isinstance(pattern, BlockSparse):
        return pattern.block
    return (1, 8, 8)


def _kernel_blocks(pattern: Pattern, q: torch.Tensor):
    from .kernels.triton_attn.launcher import block_shape, kernel_config

    far = pattern.far
    cfg = kernel_config(q.dtype, q.shape[-1], far=far is not None, sinks=far is not None and far.sinks > 0,
                        block=isinstance(pattern, BlockSparse))
    prefer = _preferred_tile(pattern)
    return cfg, block_shape(cfg.block_m, prefer), block_shape(cfg.block_n, prefer)


def _run_triton(q, k, v, pattern, layout, key_mask, scale):
    from .kernels.triton_attn.launcher import launch

    cfg, q_block, kv_block = _kernel_blocks(pattern, q)
    if isinstance(pattern, BlockSparse):
        bm = block_sparse_block_mask(pattern, layout, q, k, q_block, kv_block, scale)
        far = _block_far_triton(q, k, v, pattern, layout, key_mask, bm.selection, q_block) if pattern.far else {}
        bm = bm.to(q.device)
        windows, selection = None, bm.selection.to(torch.int8).contiguous()
    else:
        with torch.inference_mode(False):  # cached tables: normal tensors, usable under autograd later
            bm = _device_block_mask(pattern, layout, q_block, kv_block, q.device)
        windows, selection = torch.cat(bm.windows).contiguous(), None
        far = {}
    if bm.far is not None:
        from .farfield import far_field_for, pattern_sinks

        chosen = pattern_sinks(q, k, pattern, layout, key_mask)
        far = _far_launch_args(bm.far, k, v, layout, far_field_for(pattern, layout), key_mask, chosen)
        if chosen is not None:
            idx, valid = chosen
            with torch.inference_mode(False):  # cached tables: normal tensors, usable under autograd later
                near_ranges = _device_near_ranges(pattern, layout, q.device)
            far.update(sinks=idx.masked_fill(~valid, -1), near_ranges=near_ranges)
    return launch(
        q, k, v, key_mask, bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices,
        windows, selection, grid=layout.grid, text_len=layout.text_len, text_start=layout.text_start,
        video_start=layout.video_start, num_video_q_blocks=bm.num_video_q_blocks,
        num_q_blocks=bm.kv_num_blocks.shape[1], q_block=q_block, kv_block=kv_block, dilation=bm.dilation,
        selection_block=bm.selection_block, **far, scale=scale, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def _block_far_triton(q, k, v, pattern: BlockSparse, layout: TokenLayout, key_mask, selection, q_block):
    """The launcher's far-field arguments of a block-sparse pattern: far lists per (batch *
    head, kernel query block) from the call's ``[B * H, n, n]`` block ``selection``, pooled
    keys, and the sinks with their ``[B * H, n, N]`` near table."""
    from .blockmask import block_sparse_far_blocks
    from .farfield import block_far_for, pattern_sinks, sinks_near

    with torch.inference_mode(False):  # cached tables: normal tensors, usable under autograd later
        fb, near = block_sparse_far_blocks(pattern, layout, selection, q_block)
        tables = block_far_for(pattern, layout)
    chosen = pattern_sinks(q, k, pattern, layout, key_mask)
    far = _far_launch_args(fb.to(q.device), k, v, layout, tables, key_mask, chosen)
    if chosen is not None:
        idx, valid = chosen
        z, n, nb = near.shape
        sink_near = sinks_near(tables, near.view(*idx.shape[:2], n, nb), idx).reshape(z, n, -1)
        far.update(sinks=idx.masked_fill(~valid, -1), sink_near=sink_near.to(torch.int32).contiguous().to(q.device))
    return far


def _far_launch_args(fb, k, v, layout: TokenLayout, tables, key_mask, chosen):
    """The launcher's far-field arguments common to every pattern: pooled keys of ``tables``
    (the sinks ``chosen`` taken out), the far lists of ``fb`` (:class:`FarBlocks`), the pool."""
    from .farfield import pooled_keys

    return dict(far_keys=pooled_keys(k, v, layout, tables, key_mask, chosen),
                far_lut=(fb.full_far_num_boxes, fb.full_far_indices, fb.far_num_boxes, fb.far_indices,
                         fb.far_query_boxes),
                pool=fb.pool, boxes=fb.boxes_per_axis)


@functools.lru_cache(maxsize=256)
def _device_block_mask(pattern, layout, q_block, kv_block, device):
    return static_block_mask(pattern, layout, q_block, kv_block).to(device)


@functools.lru_cache(maxsize=256)
def _device_near_ranges(pattern, layout, device):
    """The Triton kernel's sink check: the far field's per-axis near box ranges, int32
    ``lo_t, hi_t, lo_h, hi_h, lo_w, hi_w`` on ``device``."""
    from .farfield import near_box_ranges

    return torch.cat([t for pair in near_box_ranges(pattern, layout) for t in pair]).to(torch.int32).to(device)


@functools.lru_cache(maxsize=1)
def _xformers_ops():
    """xformers' ops module when it is installed (an optional GPU extra), else None."""
    try:
        import xformers.ops as xops
    except ImportError:
        return None
    return xops


def _run_xformers(q, k, v, prepared, key_mask, scale):
    # xformers' kernel takes diffusers' [B, S, H, D] as it is
    return _xformers_ops().memory_efficient_attention(q, k, v, scale=scale)


def _prepare_pair(pattern, layout, q, k, scale):
    return pattern, layout


BACKEND_TABLE: Tuple[Backend, ...] = (
    Backend("xformers", _why_not_xformers, _prepare_pair, _run_xformers, auto=lambda q: True),
    Backend("triton", _why_not_triton, _prepare_pair,
            lambda q, k, v, prepared, key_mask, scale: _run_triton(q, k, v, *prepared, key_mask, scale),
            auto=lambda q: q.device.type == "cuda"),  # the interpreter is for tests: asked for only
    Backend("cpu", _why_not_cpu, _prepare_pair,
            lambda q, k, v, prepared, key_mask, scale: _run_cpu(q, k, v, *prepared, key_mask, scale),
            auto=lambda q: True),
)
_BY_NAME = {entry.name: entry for entry in BACKEND_TABLE}
assert tuple(_BY_NAME) == BACKENDS


def _dispatch(q, k, v, key_mask, spec: str, scale: float, backend: str) -> torch.Tensor:
    pattern, layout = _decode(spec)
    q, k, v = (t if t.stride(-1) == 1 and t.is_contiguous() else t.contiguous() for t in (q, k, v))
    entry = _BY_NAME[backend]
    return entry.run(q, k, v, entry.prepare(pattern, layout, q, k, scale), key_mask, scale)


@torch.library.custom_op("dit_sparse::sparse_attention", mutates_args=())
def _sparse_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor],
                         spec: str, scale: float, backend: str) -> torch.Tensor:
    return _dispatch(q, k, v, key_mask, spec, scale, backend)


@_sparse_attention_op.register_fake
def _(q, k, v, key_mask, spec, scale, backend):
    return torch.empty_like(q)


def sparse_attention(q, k, v, pattern, layout, *, key_mask=None, scale=None, backend=None):
    """Sparse attention over a DiT token layout.

    Args:
        q, k, v: ``[B, S, heads, head_dim]`` (diffusers' layout), fp32, fp16 or bf16,
            ``S = layout.text_len + T * H * W``, head_dim <= 256.
        pattern: a :class:`~dit_sparse.Full`, :class:`~dit_sparse.Neighborhood`,
            :class:`~dit_sparse.SlidingTile` or :class:`~dit_sparse.BlockSparse`.
        layout: the :class:`~dit_sparse.TokenLayout` of the sequence.
        key_mask: optional ``[B, S]`` bool, True = keep (padded text keys are False).
        scale: softmax scale, default ``head_dim ** -0.5``.
        backend: ``None`` (the first of :data:`BACKEND_TABLE` that can run the call:
            xformers for dense calls on CUDA, Triton on CUDA, the CPU kernel), or one of
            ``"xformers"``, ``"triton"``, ``"cpu"`` (an error says why it cannot run).
    Returns:
        ``[B, S, heads, head_dim]`` with q's dtype. Rows whose keys are all masked are 0.
    """
    _check_inputs(q, k, v, pattern, layout, key_mask, scale, backend)
    chosen = choose_backend(q, backend, pattern=pattern, key_mask=key_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    spec = _encode(pattern, layout)
    if torch.compiler.is_compiling():
        # An opaque custom op for torch.compile; eager calls skip the op's dispatch, whose
        # first use imports all of torch._dynamo (seconds).
        return _sparse_attention_op(q, k, v, key_mask, spec, scale, chosen)
    return _dispatch(q, k, v, key_mask, spec, scale, chosen)


# --------------------------------------------------------------------------------------
# Estimates
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedupEstimate:
    """Upper bounds on the speedup over dense attention.

    ``flop_bound`` = 1 / (fraction of query-key pairs attended); ``tile_bound`` counts every
    ``block_m x block_n`` tile that holds at least one attended pair as a whole tile (what a
    GPU kernel with those tiles computes).
    """

    flop_bound: float
    tile_bound: float
    density: float
    tile_density: float
    q_block: Tuple[int, int, int]
    kv_block: Tuple[int, int, int]


def estimate_speedup(pattern: Pattern, layout: TokenLayout, block: Tuple[int, int] = (128, 64)) -> SpeedupEstimate:
    """FLOP-bound and tile-bound speedups of ``pattern`` over dense attention on ``layout``.

    ``block`` is ``(block_m, block_n)`` in tokens (powers of two); each is laid out as a 3D
    tile the way the Triton kernel does. :class:`BlockSparse` uses its ``topk`` (a threshold
    selection depends on the data: pass q and k to ``density`` instead).
    """
    from .kernels.triton_attn.launcher import block_shape

    for name, value in (("block_m", block[0]), ("block_n", block[1])):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value & (value - 1):
            raise ValueError(f"{name}={value!r} must be a positive power of two")
    s = layout.seq_len
    text_pairs = s * s - layout.video_len ** 2
    if isinstance(pattern, BlockSparse):
        exact = pattern.density(layout)
        return SpeedupEstimate(1 / exact, 1 / exact, exact, exact, pattern.block, pattern.block)
    prefer = _preferred_tile(pattern)
    qb, kb = block_shape(block[0], prefer), block_shape(block[1], prefer)
    exact = pattern.density(layout, exact=True) if not isinstance(pattern, Full) else 1.0
    bm = static_block_mask(pattern if not isinstance(pattern, Full) else Full(), layout, qb, kb)
    dense = bm.to_dense()[0, : bm.num_video_q_blocks]
    tiles = float((dense > 0).sum())
    n_q, n_k = dense.shape
    tile_density = (tiles * math.prod(qb) * math.prod(kb) + text_pairs) / (
        n_q * math.prod(qb) * n_k * math.prod(kb) + text_pairs)
    return SpeedupEstimate(1 / exact, 1 / tile_density, exact, tile_density, qb, kb)
