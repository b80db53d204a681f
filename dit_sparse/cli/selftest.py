"""``dit-sparse selftest``: the attention kernels against the float64 reference, then timed.

    dit-sparse selftest                         # every case, then the speed table
    dit-sparse selftest --device cuda           # a GPU: FlexAttention is timed too
    dit-sparse selftest --no-speed --json selftest.json

Correctness: a fixed list of small cases (:data:`CASES`) covers every pattern kind (dense,
neighborhoods plain, strided and dilated, sliding tiles, block-sparse by top-k and by
threshold, far fields with and without sinks), text first, last and absent, padded text keys
in a key mask, grids that no block divides, batch 2, in every dtype the device computes in
(CPU: float32, bfloat16, float16; CUDA: float16, bfloat16 where the GPU has it, float32).
Each case runs through the chosen backend and is compared with ``reference_attention`` in
float64: the error is ``max |out - ref| / max |ref|``, allowed up to a per-dtype tolerance
(:data:`TOLERANCE`). A case the backend cannot run counts as skipped, with the backend's
reason (so does bfloat16 on the Triton interpreter, which computes it wrongly); a case that
raises counts as failed.

Speed: per grid (``--grids``), dense ``F.scaled_dot_product_attention`` on contiguous
``[B, H, S, D]`` tensors against ``sparse_attention`` for a sliding tile and a neighborhood
picked near :data:`TARGET_DENSITY` and a top-k block-sparse pattern, batch 1, the fastest
of ``--repeat`` runs after a warm-up run (which also builds the cached tables); float32 on
CPU, bfloat16 on CUDA. With ``--flex``, ``torch.compile(flex_attention)`` runs the same
attention in its best case (tokens permuted tile-major by 3D blocks of 128, block tables
built beforehand; neither is timed) and is checked against the sparse output.

Output: one block to paste into a bug report (versions, device, threads, backend, counts,
worst error per dtype, failures, the speed table). Exit code 0 when every case that ran
passed, 1 when a case failed or raised, a timed sparse call raised, or no case ran at all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

from . import CLIError

NAME = "selftest"
HELP = "check the attention kernels against a float64 reference, then time them against dense attention"

BACKEND_CHOICES = ("auto", "cpu", "triton", "xformers")
#: Largest allowed error ``max |out - ref| / max |ref|`` per dtype (inputs ~ N(0, 1)): about
#: ten times the largest seen over the cases on a CPU and on the Triton interpreter (more for
#: float32), well under the error of a wrong window or a dropped key (errors of 10% and
#: more). ``"tf32"``: float32 inputs on the Triton kernel on a GPU, which multiplies them in
#: TF32 (10 mantissa bits, like float16).
TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2, "tf32": 5e-3}
DTYPE_ORDER = ("float32", "bfloat16", "float16")
#: The density the speed table's sliding tile and neighborhood are picked near (counted at
#: the kernels' block granularity), and the block-sparse top-k fraction.
TARGET_DENSITY = 0.15
DEFAULT_GRIDS = ("16x32x32", "21x30x52")
#: The speed table's batch size (the tests' inputs use batch 2).
SPEED_BATCH = 1
FLEX_BLOCK = 128

FLEX_HELP = ("also time torch.compile(flex_attention) with the same attention (default: on for CUDA; "
             "off for CPU, where compiling it takes longer than the rest of the selftest, and "
             "FlexAttention's CPU template is not what it is built for)")


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------


def _grid(text: str) -> Tuple[int, int, int]:
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a grid: give TxHxW, three positive ints (e.g. 16x32x32)")
    return values  # type: ignore[return-value]


def _positive(name: str, hi: Optional[int] = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < 1 or (hi is not None and value > hi):
            allowed = f"an integer from 1 to {hi}" if hi is not None else "an integer >= 1"
            raise argparse.ArgumentTypeError(f"{text!r} must be {allowed}")
        return value

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="cpu, cuda or cuda:N (default: cuda when PyTorch sees a GPU, else cpu)")
    p.add_argument("--backend", default="auto", metavar="NAME",
                   help="auto (what sparse_attention picks for each call), cpu, triton or xformers "
                        "(default: auto)")
    p.add_argument("--dtypes", nargs="+", default=None, metavar="DTYPE",
                   help="float32, bfloat16, float16 (default: every one the device computes in)")
    p.add_argument("--no-speed", action="store_true", help="skip the speed table")
    p.add_argument("--grids", nargs="+", type=_grid, default=None, metavar="TxHxW",
                   help=f"token grids of the speed table (default: {' '.join(DEFAULT_GRIDS)})")
    p.add_argument("--heads", type=_positive("heads"), default=2, metavar="N",
                   help="heads in the speed table (default: 2, so that a run on a small CPU stays "
                        "well under a minute)")
    p.add_argument("--head-dim", type=_positive("head-dim", 256), default=64, metavar="N",
                   help="head dimension in the speed table (default: 64)")
    p.add_argument("--repeat", type=_positive("repeat", 1000), default=None, metavar="N",
                   help="timed runs per entry after one warm-up run; the fastest counts (default: 1 on "
                        "CPU, where one dense run on 21x30x52 takes seconds; 10 on CUDA)")
    p.add_argument("--flex", action=argparse.BooleanOptionalAction, default=None, help=FLEX_HELP)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


_DEVICE = re.compile(r"(cpu|cuda)(:\d+)?")


def resolve_device(value: Optional[str]):
    """The ``torch.device`` of ``--device``; CLIError (one line) for a bad or absent device."""
    import torch

    if value is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _DEVICE.fullmatch(value):
        raise CLIError(f"--device {value!r} is not a device selftest runs on; allowed: cpu, cuda, cuda:N")
    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            built = torch.version.cuda
            why = (f"this PyTorch ({torch.__version__}) is built without CUDA" if built is None else
                   f"PyTorch {torch.__version__} (CUDA {built}) finds no usable GPU")
            raise CLIError(f"--device {value!r}: CUDA is not available: {why}")
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= torch.cuda.device_count():
            raise CLIError(f"--device {value!r}: there are {torch.cuda.device_count()} GPUs "
                           f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device(value)


def device_dtypes(device) -> Dict[str, Optional[str]]:
    """Per dtype name: None when ``device`` computes in it, else why not."""
    import torch

    out: Dict[str, Optional[str]] = {name: None for name in DTYPE_ORDER}
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        out["bfloat16"] = f"{torch.cuda.get_device_name(device)} has no bfloat16"
    return out


def check_args(args) -> None:
    """Everything checkable before torch is imported; CLIError names the flag and value."""
    if args.backend not in BACKEND_CHOICES:
        raise CLIError(f"--backend {args.backend!r} is unknown; allowed: {', '.join(BACKEND_CHOICES)}")
    for name in args.dtypes or ():
        if name not in DTYPE_ORDER:
            raise CLIError(f"--dtypes {name!r} is unknown; allowed: {', '.join(DTYPE_ORDER)}")
    if args.no_speed and (args.grids is not None or args.flex):
        flag = "--grids" if args.grids is not None else "--flex"
        raise CLIError(f"{flag} has no effect with --no-speed (it sets up the speed table)")
    if args.json is not None:
        from dit_sparse.atomic import check_folder

        if os.path.isdir(args.json):
            raise CLIError(f"--json {args.json!r} is a folder; give a file name")
        check_folder(args.json, "--json")


# --------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One correctness case: a pattern spec on a layout, with or without a key mask."""

    pattern: str
    grid: Tuple[int, int, int]
    text_len: int = 0
    text_position: str = "first"
    key_mask: bool = False
    head_dim: int = 64

    @property
    def name(self) -> str:
        t, h, w = self.grid
        text = f"text {self.text_len} {self.text_position}" if self.text_len else "no text"
        return (f"{self.pattern} @ {t}x{h}x{w}, {text}{', key mask' if self.key_mask else ''}"
                f"{f', head_dim {self.head_dim}' if self.head_dim != 64 else ''}")


#: Small on purpose (the reference builds S x S scores; the Triton interpreter runs every
#: program in Python), and awkward on purpose: grids no block or pool divides.
CASES: Tuple[Case, ...] = (
    Case("full", (3, 5, 7)),
    Case("full", (3, 5, 7), 5, "first", key_mask=True),
    Case("neighborhood:kernel=3x3x3", (3, 5, 7), 4, "last"),
    Case("neighborhood:kernel=3x3x3", (3, 5, 7), 4, "first", key_mask=True),
    Case("neighborhood:kernel=2x4x6,dilation=1x2x1,stride=1x2x3", (4, 6, 9), 3, "first", key_mask=True),
    Case("neighborhood:kernel=3x5x5,stride=1x2x2", (2, 7, 9), 0, head_dim=128),
    Case("neighborhood:kernel=3x3x3,far=1x2x3", (3, 5, 7), 4, "first", key_mask=True),
    Case("neighborhood:kernel=2x3x4,dilation=1x2x1,far=3x5x2", (3, 6, 7), 4, "last"),
    Case("neighborhood:kernel=1x3x5,stride=1x1x2,far=2x2x3,sinks=2", (4, 5, 11), 3, "last", key_mask=True),
    Case("sliding-tile:tile=1x4x4,window=3x1x3", (3, 9, 10), 0),
    Case("sliding-tile:tile=1x3x4,window=1x1x1", (2, 9, 12), 5, "last", key_mask=True),
    Case("sliding-tile:tile=1x3x4,window=1x1x1,far=1x3x4", (2, 9, 12), 5, "first", key_mask=True),
    Case("sliding-tile:tile=2x2x3,window=1x3x1,far=1x4x4,sinks=3", (3, 7, 9), 0),
    Case("block-sparse:block=1x4x4,topk=0.3", (3, 5, 7), 4, "first", key_mask=True),
    Case("block-sparse:block=2x4x4,threshold=0.5", (4, 6, 9), 3, "last"),
    Case("block-sparse:block=2x3x4,topk=0.5", (3, 7, 9), 0, key_mask=True),
    Case("block-sparse:block=1x4x4,topk=0.3,far=1x4x4,sinks=2", (3, 8, 9), 3, "last", key_mask=True),
)

_BATCH, _HEADS = 2, 2


@dataclass
class Result:
    """One case in one dtype: ``status`` is "pass", "fail" or "skip"."""

    case: str
    dtype: str
    status: str
    error: Optional[float] = None  # max |out - ref| / max |ref|
    tolerance: Optional[float] = None
    backend: Optional[str] = None
    reason: str = ""


def _inputs(case: Case, layout, dtype, device, seed: int):
    """q, k, v ~ N(0, 1) and the key mask (last text keys padded per batch row, a few video keys dropped)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    s = layout.seq_len
    q, k, v = (torch.randn(_BATCH, s, _HEADS, case.head_dim, generator=g).to(dtype).to(device) for _ in range(3))
    key_mask = None
    if case.key_mask:
        key_mask = torch.rand(_BATCH, s, generator=g) > 0.1
        t0 = layout.text_start
        for b in range(_BATCH):
            keep = max(1, layout.text_len - 2 * (b + 1))
            key_mask[b, t0 + keep:t0 + layout.text_len] = False
        key_mask = key_mask.to(device)
    return q, k, v, key_mask


def run_case(case: Case, dtype_name: str, device, backend: Optional[str], seed: int) -> Result:
    """``sparse_attention`` through ``backend`` (None: its own choice) against the float64 reference."""
    import torch

    import dit_sparse as ds
    from dit_sparse import ops

    dtype = getattr(torch, dtype_name)
    pattern = ds.parse_pattern(case.pattern)
    layout = ds.TokenLayout(case.grid, text_len=case.text_len, text_position=case.text_position)
    q, k, v, key_mask = _inputs(case, layout, dtype, device, seed)
    result = Result(case.name, dtype_name, "skip")
    try:
        result.backend = ops.choose_backend(q, backend, pattern=pattern, key_mask=key_mask)
    except ValueError as exc:
        result.reason = " ".join(str(exc).split())
        return result
    tf32 = dtype_name == "float32" and result.backend == "triton" and device.type == "cuda"
    result.tolerance = tol = TOLERANCE["tf32" if tf32 else dtype_name]
    if result.backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        result.reason = ("the Triton interpreter multiplies raw bits in a bfloat16 tl.dot "
                         "(triton-lang/triton#11584): run on a GPU to check bfloat16")
        return result
    try:
        out = ds.sparse_attention(q, k, v, pattern, layout, key_mask=key_mask, backend=result.backend)
        if out.shape != q.shape or out.dtype != q.dtype:
            raise RuntimeError(f"output {tuple(out.shape)} {out.dtype}, expected {tuple(q.shape)} {q.dtype}")
    except Exception as exc:  # a crash is a failed case, not the end of the selftest
        result.status, result.reason = "fail", f"raised {type(exc).__name__}: {' '.join(str(exc).split())}"
        return result
    # fp32 copies of the inputs are exact, so the reference sees the kernel's inputs, in float64
    ref = ds.reference_attention(q.float(), k.float(), v.float(), pattern, layout, key_mask=key_mask).double()
    err = ((out.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()
    result.error = err
    if not math.isfinite(err):
        result.status, result.reason = "fail", "output is not finite"
    elif err > tol:
        result.status, result.reason = "fail", f"error {err:.3g} > tolerance {tol:g}"
    else:
        result.status = "pass"
    return result


# --------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------


@dataclass
class SpeedRow:
    grid: str
    pattern: str
    density: Optional[float] = None
    dense_ms: Optional[float] = None
    sparse_ms: Optional[float] = None
    flex_ms: Optional[float] = None
    note: str = ""

    @property
    def speedup(self) -> Optional[float]:
        if self.dense_ms is None or not self.sparse_ms:
            return None
        return self.dense_ms / self.sparse_ms


def short_spec(pattern) -> str:
    """``pattern.spec`` without the fields at their defaults (dilation and stride 1)."""
    kind, _, fields = pattern.spec.partition(":")
    kept = [f for f in fields.split(",") if f and f not in ("dilation=1x1x1", "stride=1x1x1")]
    return kind + (":" + ",".join(kept) if kept else "")


def speed_patterns(layout) -> list:
    """A sliding tile and a neighborhood with densities nearest :data:`TARGET_DENSITY` on
    ``layout`` (block granularity), and a top-k block-sparse pattern at that fraction."""
    import itertools

    import dit_sparse as ds

    def nearest(candidates):
        return min(candidates, key=lambda p: abs(math.log(p.density(layout) / TARGET_DENSITY)))

    tiles = [ds.SlidingTile((4, 8, 8), w) for w in itertools.product((1, 3, 5), repeat=3)]
    hoods = [ds.Neighborhood((kt, ks, ks)) for kt in (3, 5, 7) for ks in (7, 9, 11, 13, 15, 17, 21)]
    return [nearest(tiles), nearest(hoods), ds.BlockSparse((4, 8, 8), topk=TARGET_DENSITY)]


def _timed(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> float:
    """Fastest wall time (s) of ``repeat`` runs after a warm-up run (load from other processes
    only adds time, so the minimum is the steadiest estimate)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


class Flex:
    """``torch.compile(flex_attention)`` running a dit-sparse pattern, in its best case:
    tokens permuted tile-major by 3D blocks of :data:`FLEX_BLOCK` tokens (2x8x8), so that
    flex's 1D blocks are 3D blocks; block tables built here, chunk by chunk of query blocks,
    from the same window tables or block selection the pattern uses (``create_block_mask``
    would evaluate the mask on all ``S x S`` pairs at once)."""

    def __init__(self):
        import torch
        from torch.nn.attention.flex_attention import flex_attention

        self.compiled = torch.compile(flex_attention, dynamic=False)

    @staticmethod
    def permutation(grid):
        from dit_sparse.tiling import BlockGrid

        tokens, valid = BlockGrid(grid, (2, 8, 8)).block_token_table()
        return tokens.reshape(-1)[valid.reshape(-1)]

    @staticmethod
    def block_mask(pattern, layout, q, k, perm, device):
        """A flex ``BlockMask`` over the permuted video tokens (no text: speed layouts have none)."""
        import torch
        from torch.nn.attention.flex_attention import BlockMask

        import dit_sparse as ds
        from dit_sparse.tiling import BlockGrid, block_sparse_select

        s = perm.numel()
        grid = layout.grid
        if isinstance(pattern, ds.BlockSparse):
            bgrid = BlockGrid(grid, pattern.block)
            sel = block_sparse_select(pattern, layout, bgrid, q, k)[0]  # [H, nb, nb], batch 0
            blk = bgrid.token_block().to(device)[perm]

            def rows_mask(rows):
                return sel[:, blk[rows]][:, :, blk]

            def mask_mod(b, h, qi, ki):
                return sel[h, blk[qi], blk[ki]]
        else:
            _, gh, gw = grid
            pc = perm.cpu()
            coords = torch.stack([pc // (gh * gw), (pc // gw) % gh, pc % gw])  # [3, s]
            axes = []  # per axis, per permuted token: coordinate, window bounds, dilation group
            for (lo, hi, d), c in zip(pattern.windows(layout), coords):
                axes.append(tuple(t.contiguous().to(device) for t in (c, lo[c], hi[c], c % d)))

            def rows_mask(rows):
                out = None
                for c, lo, hi, group in axes:
                    ok = (c[None, :] >= lo[rows, None]) & (c[None, :] <= hi[rows, None])
                    ok &= group[None, :] == group[rows, None]
                    out = ok if out is None else out & ok
                return out[None]

            def mask_mod(b, h, qi, ki):  # one level of captured lookups (Inductor's CPU template wants that)
                keep = None
                for c, lo, hi, group in axes:
                    ok = (c[ki] >= lo[qi]) & (c[ki] <= hi[qi]) & (group[ki] == group[qi])
                    keep = ok if keep is None else keep & ok
                return keep

        n = -(-s // FLEX_BLOCK)
        pad = n * FLEX_BLOCK - s
        any_rows, full_rows = [], []
        step = 8 * FLEX_BLOCK
        for start in range(0, n * FLEX_BLOCK, step):
            rows = torch.arange(start, min(start + step, s), device=device)
            m = rows_mask(rows)  # [H or 1, r, s]
            tiles = -(-rows.numel() // FLEX_BLOCK)
            extra = tiles * FLEX_BLOCK - rows.numel()
            hm = m.shape[0]
            for fill, acc, reduce in ((False, any_rows, torch.Tensor.any), (True, full_rows, torch.Tensor.all)):
                mp = torch.nn.functional.pad(m, (0, pad, 0, extra), value=fill)
                acc.append(reduce(reduce(mp.view(hm, tiles, FLEX_BLOCK, n, FLEX_BLOCK), 4), 2))
        anyb, full = torch.cat(any_rows, 1), torch.cat(full_rows, 1)  # [H or 1, n, n]
        partial = anyb & ~full

        def table(rel):
            num = rel.sum(-1).to(torch.int32)[None]
            idx = torch.argsort((~rel).to(torch.int8), dim=-1, stable=True).to(torch.int32)[None]
            return num, idx

        return BlockMask.from_kv_blocks(*table(partial), *table(full), BLOCK_SIZE=FLEX_BLOCK,
                                        mask_mod=mask_mod, seq_lengths=(s, s))


def _dense_seconds(q, k, v, repeat: int, sync) -> float:
    """Dense SDPA on contiguous ``[B, H, S, D]`` copies of the ``[B, S, H, D]`` inputs."""
    import torch.nn.functional as F

    qh, kh, vh = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return _timed(lambda: F.scaled_dot_product_attention(qh, kh, vh), repeat, sync)


def run_speed(args, device, backend: Optional[str], progress) -> Tuple[List[SpeedRow], List[str]]:
    """The speed table's rows and notes (flex compile times, failures)."""
    import torch

    import dit_sparse as ds
    from dit_sparse import ops

    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    use_flex = args.flex if args.flex is not None else device.type == "cuda"
    rows: List[SpeedRow] = []
    notes: List[str] = []
    flex = None
    if use_flex:
        try:
            flex = Flex()
        except Exception as exc:  # an old PyTorch without flex_attention
            notes.append(f"flex: unavailable: {type(exc).__name__}: {' '.join(str(exc).split())}")
    g = torch.Generator().manual_seed(0)
    for grid in args.grids:
        grid_text = "x".join(map(str, grid))
        layout = ds.TokenLayout(grid)
        s = layout.seq_len
        q, k, v = (torch.randn(SPEED_BATCH, s, args.heads, args.head_dim, generator=g).to(dtype).to(device)
                   for _ in range(3))
        dense = _dense_seconds(q, k, v, args.repeat, sync)
        progress(1)
        if flex is not None:
            torch._dynamo.reset()  # a fresh cache per grid: past its recompile limit flex falls back to eager
            perm = Flex.permutation(grid).to(device)
            qp, kp, vp = (t[:, perm].transpose(1, 2).contiguous() for t in (q, k, v))
        for pattern in speed_patterns(layout):
            row = SpeedRow(grid_text, short_spec(pattern), dense_ms=dense * 1e3)
            rows.append(row)
            if isinstance(pattern, ds.BlockSparse):
                row.density = pattern.density(layout, q=q, k=k)
            else:
                row.density = pattern.density(layout)
            try:
                chosen = ops.choose_backend(q, backend, pattern=pattern)
                if chosen == "triton" and device.type == "cpu":
                    raise ValueError("the Triton interpreter is for correctness checks only: not timed")
            except ValueError as exc:
                row.note = "skipped: " + " ".join(str(exc).split())
                progress(1)
                continue
            try:
                t = _timed(lambda: ds.sparse_attention(q, k, v, pattern, layout, backend=chosen), args.repeat, sync)
                row.sparse_ms = t * 1e3
            except Exception as exc:
                row.note = f"raised {type(exc).__name__}: {' '.join(str(exc).split())}"
                notes.append(f"error: {grid_text} {row.pattern}: {row.note}")
            progress(1)
            if flex is not None:
                row_note = _flex_row(flex, row, pattern, layout, q, k, v, qp, kp, vp, perm, chosen, args, sync, device)
                if row_note:
                    notes.append(f"flex {grid_text} {row.pattern}: {row_note}")
    return rows, notes


def _flex_row(flex, row, pattern, layout, q, k, v, qp, kp, vp, perm, chosen, args, sync, device) -> str:
    """Time flex for one row (``row.flex_ms``); returns a note (compile time, or why not)."""
    import dit_sparse as ds

    try:
        t0 = time.perf_counter()
        bm = flex.block_mask(pattern, layout, q, k, perm, device)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = flex.compiled(qp, kp, vp, block_mask=bm)
        sync()
        compile_s = time.perf_counter() - t0
        row.flex_ms = _timed(lambda: flex.compiled(qp, kp, vp, block_mask=bm), args.repeat, sync) * 1e3
    except Exception as exc:  # does not compile here: reported, not fatal
        return f"did not run: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    note = f"block tables {build:.1f} s, compile {compile_s:.1f} s"
    if row.sparse_ms is not None:
        ref = ds.sparse_attention(q, k, v, pattern, layout, backend=chosen)[:, perm].transpose(1, 2).double()
        err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
        if not err <= 2 * TOLERANCE[str(q.dtype).split(".")[-1]]:
            note += f"; differs from dit-sparse by {err:.2g} (relative): a different attention"
    return note


# --------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def environment(device) -> Dict[str, str]:
    import torch

    import dit_sparse

    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        name = f"{device} ({torch.cuda.get_device_name(device)}, sm_{cap[0]}{cap[1]}, CUDA {torch.version.cuda})"
    else:
        name = f"cpu ({cpu_name()}, {os.cpu_count()} CPUs)"
    return {"dit-sparse": dit_sparse.__version__, "torch": torch.__version__, "triton": _version("triton"),
            "diffusers": _version("diffusers"), "python": platform.python_version(),
            "platform": platform.platform(), "device": name, "threads": str(torch.get_num_threads())}


def _fmt_ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def summary(env: Dict[str, str], backend: str, results: List[Result], rows: Optional[List[SpeedRow]],
            notes: List[str], speed_setup: str) -> str:
    from dit_sparse.report import format_table

    passed = [r for r in results if r.status == "pass"]
    failed = [r for r in results if r.status == "fail"]
    skipped = [r for r in results if r.status == "skip"]
    ran = sorted({r.backend for r in results if r.status != "skip" and r.backend})
    versions = ", ".join(f"{k} {env[k]}" for k in ("dit-sparse", "torch", "triton", "diffusers", "python"))
    lines = ["dit-sparse selftest",
             f"versions: {versions}",
             f"platform: {env['platform']}",
             f"device: {env['device']}; PyTorch threads: {env['threads']}",
             f"backend: {backend}" + (f" (ran: {', '.join(ran)})" if ran else ""),
             f"correctness: {len(results)} runs ({len(CASES)} cases x dtypes) against the float64 reference: "
             f"{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped"]
    for dtype in DTYPE_ORDER:
        measured = [r for r in results if r.dtype == dtype and r.error is not None and math.isfinite(r.error)]
        if measured:
            worst = max(measured, key=lambda r: r.error)
            lines.append(f"  worst error {dtype}: {worst.error:.2e} (tolerance {worst.tolerance:g}) in {worst.case}")
    for r in failed:
        lines.append(f"  FAILED {r.dtype} {r.case}: {r.reason}")
    reasons: Dict[str, int] = {}
    for r in skipped:
        key = f"{r.dtype} {r.reason}" if r.reason.startswith("device:") else r.reason
        reasons[key] = reasons.get(key, 0) + 1
    for reason, count in reasons.items():
        lines.append(f"  skipped {count}: {reason}")
    if not passed and not failed:
        lines.append("  no case ran: nothing was checked")
    if rows is not None:
        lines.append(f"speed: {speed_setup}")
        table = [("grid", "pattern", "density", "dense_ms", "sparse_ms", "speedup", "flex_ms")]
        for row in rows:
            table.append((row.grid, row.pattern, "-" if row.density is None else f"{row.density:.3f}",
                          _fmt_ms(row.dense_ms), _fmt_ms(row.sparse_ms),
                          "-" if row.speedup is None else f"{row.speedup:.2f}x", _fmt_ms(row.flex_ms)))
        lines.append(format_table(table, left=2))
        lines += [f"  {row.grid} {row.pattern}: {row.note}" for row in rows if row.note]
        lines += [f"  {note}" for note in notes if not note.startswith("error:")]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------


def run(args) -> int:
    check_args(args)
    import torch

    device = resolve_device(args.device)
    backend = None if args.backend == "auto" else args.backend
    supported = device_dtypes(device)
    dtypes = [d for d in DTYPE_ORDER if args.dtypes is None or d in args.dtypes]
    if args.grids is None:
        args.grids = [_grid(g) for g in DEFAULT_GRIDS]
    if args.repeat is None:
        args.repeat = 1 if device.type == "cpu" else 10
    from tqdm.auto import tqdm

    results: List[Result] = []
    work = [(seed, case, d) for d in dtypes for seed, case in enumerate(CASES)]  # same inputs in every dtype
    with torch.inference_mode(), tqdm(total=len(work), desc="selftest", unit="case", disable=args.quiet,
                                      leave=False, file=sys.stderr) as bar:
        for seed, case, dtype in work:
            if supported[dtype]:
                results.append(Result(case.name, dtype, "skip", reason=f"device: {supported[dtype]}"))
            else:
                results.append(run_case(case, dtype, device, backend, seed))
            bar.update(1)
    rows: Optional[List[SpeedRow]] = None
    notes: List[str] = []
    heads_dim = f"{args.heads} heads, head_dim {args.head_dim}"
    dtype_name = "float32" if device.type == "cpu" else "bfloat16"
    setup = (f"batch {SPEED_BATCH}, {heads_dim}, {dtype_name}; ms: fastest of {args.repeat} after a warm-up; "
             f"dense = F.scaled_dot_product_attention")
    if not args.no_speed:
        total = 4 * len(args.grids)  # dense, then three patterns, per grid
        with torch.inference_mode(), tqdm(total=total, desc="speed", unit="run", disable=args.quiet,
                                          leave=False, file=sys.stderr) as bar:
            rows, notes = run_speed(args, device, backend, bar.update)
    env = environment(device)
    text = summary(env, args.backend, results, rows, notes, setup)
    print(text)
    errors = [n for n in notes if n.startswith("error:")]
    failed = any(r.status == "fail" for r in results) or bool(errors)
    nothing = not any(r.status == "pass" for r in results)
    if args.json is not None:
        from dit_sparse.atomic import atomic_path

        data = {"environment": env, "backend": args.backend,
                "results": [dict(asdict(r), error=r.error if r.error is not None and math.isfinite(r.error) else None)
                            for r in results],
                "speed": None if rows is None else [dict(asdict(r), speedup=r.speedup) for r in rows],
                "speed_setup": setup if rows is not None else None, "notes": notes,
                "exit_code": 1 if failed or nothing else 0}
        with atomic_path(args.json, "--json") as tmp:
            tmp.write_text(json.dumps(data, indent=1, allow_nan=False, default=str) + "\n")
    return 1 if failed or nothing else 0
