"""Sparse attention patterns over a (T, H, W) token grid.

Every pattern is a frozen dataclass that round-trips through ``to_dict()``/``from_dict()``
(JSON-safe) and answers ``density(layout)`` and ``mask(layout, q=None, k=None)``.

* :class:`Full` - dense attention.
* :class:`Neighborhood` - 3D neighborhood attention with exactly the non-causal semantics of
  NATTEN's ``na3d`` (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023;
  "Dilated Neighborhood Attention Transformer", 2022; "Generalized Neighborhood Attention",
  2025): per axis, queries are split into ``dilation`` groups (coordinate modulo dilation),
  each group is a non-dilated problem of its own length; a query's window of ``kernel``
  keys is centred on it and shifted to stay inside the group; with ``stride`` > 1, queries
  are cut into stride groups that all use the window of their centre query (the right-hand
  one of the two centre queries for even strides, the last query of a truncated group when
  the centre falls outside it). Unlike NATTEN, a kernel larger than an axis is clamped to the
  axis (the window covers it) instead of raising, so that plans transfer across resolutions.
* :class:`SlidingTile` - sliding tile attention (Zhang et al., "Fast Video Generation with
  Sliding Tile Attention", 2025): the grid is cut into tiles, and every query tile attends to
  the ``window`` tiles around it, shifted to stay inside the grid. With odd windows it is the
  same attention as ``Neighborhood(kernel=tile * window, stride=tile)``; with even ones the
  window stays tile-aligned (``window // 2`` tiles before the query's tile) where that
  strided neighbourhood would not (the class docstring has both rules).
* :class:`BlockSparse` - data-dependent block selection from mean-pooled q and k, in the
  spirit of SpargeAttn / Sparse VideoGen / XAttention: per batch, head and query block, the
  ``topk`` fraction of key blocks with the largest pooled scores, or the fewest blocks whose
  pooled softmax mass reaches ``threshold``. A query block always keeps its own block.

Text tokens (``layout.text_len``) are global for every pattern.

A :class:`FarField` (``far=`` on :class:`Neighborhood` and :class:`SlidingTile`) summarises
the keys a pattern does not compute exactly instead of dropping them: pooled boxes, one
key each (PSA's coarse levels; :mod:`dit_sparse.farfield` has the exact rule).

Densities are counted on the tables that the kernels run (:mod:`dit_sparse.tiling`,
:mod:`dit_sparse.farfield`); those modules ask a pattern for its window tables and import
no pattern class, so the dependency runs one way: patterns -> tiling, farfield -> layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, NamedTuple, Optional, Tuple, Type

import torch

from .farfield import block_far_for, far_field_for
from .layout import TokenLayout, as_triple
from .tiling import BlockGrid, axis_mask, block_sparse_select, tiling_for

Triple = Tuple[int, int, int]

# --------------------------------------------------------------------------------------
# One axis of a neighborhood: the window of every query coordinate.
# --------------------------------------------------------------------------------------


def axis_windows(length: int, kernel: int, dilation: int = 1, stride: int = 1):
    """Window bounds of every query coordinate on one axis.

    Returns ``(lo, hi)``, two int64 tensors of shape ``[length]`` in absolute coordinates:
    query ``i`` attends to key ``j`` iff ``j % dilation == i % dilation`` and
    ``lo[i] <= j <= hi[i]``. This is NATTEN's non-causal rule, with the kernel clamped to the
    length of each dilation group.
    """
    i = torch.arange(length, dtype=torch.int64)
    group = i % dilation
    pos = i // dilation
    group_len = (length - group + dilation - 1) // dilation
    leader = torch.minimum((pos // stride) * stride + stride // 2, group_len - 1)
    start = torch.minimum((leader - kernel // 2).clamp(min=0), (group_len - kernel).clamp(min=0))
    end = torch.minimum(start + kernel - 1, group_len - 1)
    return group + start * dilation, group + end * dilation


# --------------------------------------------------------------------------------------
# The far field
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FarField:
    """Keys outside a pattern's exact set, summarised by pooled boxes instead of dropped.

    The video grid is cut into boxes of ``pool`` tokens per axis (ragged at the far ends; a
    pool larger than an axis covers it). For a query in box ``Qb``, every key box ``Kb``
    that holds no exactly attended key of any query of ``Qb`` contributes one pooled key:
    the mean key and mean value of its tokens, with the logit bias ``log(count)``, so that a
    box of equal keys weighs exactly what its members would. Boxes that do hold exact keys
    contribute nothing pooled (no key is ever counted twice); text keys stay exact.

    ``sinks``: per batch and head, the ``sinks`` video keys with the highest score against the
    mean video query stay exact for every query whose box does not hold them near, and leave
    the mean and count of their box: the single far tokens a mean would wash out (attention
    sinks, Xiao et al. 2023; chosen at run time from pooled queries, the way SpargeAttn and
    XAttention score blocks).

    The idea is Pyramid Sparse Attention's (Li et al., 2025: pooled coarse levels instead
    of pruned blocks) and the block-mean far field of MInference-style "pooled" attention;
    the ``log(count)`` bias is what makes a pooled key the exact stand-in for identical keys.
    """

    pool: Triple = (1, 8, 8)
    sinks: int = 0

    def __post_init__(self):
        object.__setattr__(self, "pool", as_triple("pool", self.pool))
        if isinstance(self.sinks, bool) or not isinstance(self.sinks, int) or self.sinks < 0:
            raise ValueError(f"sinks={self.sinks!r} must be an int >= 0")

    @staticmethod
    def of(value) -> Optional["FarField"]:
        """A FarField from a FarField, its ``to_dict`` form, a pool size (int or 3 ints), or None."""
        if value is None or isinstance(value, FarField):
            return value
        if isinstance(value, dict):
            extra = set(value) - {"pool", "sinks"}
            if extra:
                raise ValueError(f"far={value!r}: unknown far-field fields {sorted(extra)}; allowed: ['pool', 'sinks']")
            return FarField(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        if isinstance(value, (int, tuple, list)) and not isinstance(value, bool):
            return FarField(tuple(value) if isinstance(value, list) else value)
        raise TypeError(f"far={value!r} must be a FarField, a dict like {{'pool': [1, 8, 8]}}, a pool size or None")

    def to_dict(self) -> dict:
        return {"pool": list(self.pool), **({"sinks": self.sinks} if self.sinks else {})}

    @property
    def spec(self) -> str:
        """``far=POOL[,sinks=N]`` of a pattern spec."""
        return "far=" + "x".join(map(str, self.pool)) + (f",sinks={self.sinks}" if self.sinks else "")


# --------------------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------------------

_REGISTRY: Dict[str, Type["Pattern"]] = {}


class Pattern:
    """Base class of all patterns. Subclasses are frozen dataclasses with a ``kind``."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _REGISTRY[cls.kind] = cls

    # --- serialisation -------------------------------------------------------------
    def _set_spec(self):
        """Cache the canonical spec string of the pattern (``parse_pattern`` reads it back;
        the kernels' cache key, a constant for torch.compile). Called by every constructor."""
        items = []
        for key, value in sorted(self.to_dict().items()):
            if key == "kind" or value is None:
                continue
            if isinstance(value, dict):  # a far field: far=POOL[,sinks=N]
                items.append(FarField.of(value).spec)
                continue
            text = "x".join(map(str, value)) if isinstance(value, list) else repr(value)
            items.append(f"{key}={text}")
        spec = self.kind.replace("_", "-") + (":" + ",".join(items) if items else "")
        object.__setattr__(self, "spec", spec)

    def to_dict(self) -> dict:
        out = {"kind": self.kind}
        for name in self.__dataclass_fields__:  # type: ignore[attr-defined]
            value = getattr(self, name)
            if name == "far" and value is None:
                continue  # no far field: the dict of earlier versions, unchanged
            if isinstance(value, FarField):
                value = value.to_dict()
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @staticmethod
    def from_dict(data: dict) -> "Pattern":
        if not isinstance(data, dict) or "kind" not in data:
            raise ValueError(f"pattern data={data!r} must be a dict with a 'kind' key")
        kind = data["kind"]
        if kind not in _REGISTRY:
            raise ValueError(f"unknown pattern kind={kind!r}; known kinds: {sorted(_REGISTRY)}")
        cls = _REGISTRY[kind]
        fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
        extra = set(data) - set(fields) - {"kind"}
        if extra:
            raise ValueError(f"pattern {kind!r} got unknown fields {sorted(extra)}; allowed: {sorted(fields)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "kind"}
        return cls(**kwargs)

    # --- semantics -----------------------------------------------------------------
    def video_mask(self, layout: TokenLayout, q=None, k=None) -> torch.Tensor:
        raise NotImplementedError

    def mask(self, layout: TokenLayout, q: Optional[torch.Tensor] = None,
             k: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Dense bool mask over the whole sequence (True = attend), for tests and pictures.

        ``[S, S]`` for static patterns, ``[B, heads, S, S]`` for :class:`BlockSparse` (which
        needs ``q`` and ``k``). The runtime never builds it.
        """
        video = self.video_mask(layout, q, k)
        if layout.text_len == 0:
            return video
        s, v0, n = layout.seq_len, layout.video_start, layout.video_len
        full = torch.ones(*video.shape[:-2], s, s, dtype=torch.bool)
        full[..., v0:v0 + n, v0:v0 + n] = video
        return full

    #: The far field (None: keys outside the pattern are dropped).
    far: Optional[FarField] = None

    def exact_part(self) -> "Pattern":
        """This pattern without its far field (what the kernels compute exactly)."""
        return self

    def density(self, layout: TokenLayout, *, exact: bool = False) -> float:
        """Fraction of the ``S x S`` query-key pairs that are computed (a pooled key of the
        far field counts as one key).

        By default counted at the block granularity that the kernels compute (a partly
        kept block costs the whole block); ``exact=True`` counts the attended pairs.
        """
        dense = tiling_for(self.exact_part(), layout).density(exact=exact)
        if self.far is None:
            return dense
        s = layout.seq_len
        return dense + far_field_for(self, layout).pooled_pairs() / (s * s)


@dataclass(frozen=True)
class Full(Pattern):
    """Dense attention."""

    kind: ClassVar[str] = "full"

    def __post_init__(self):
        self._set_spec()

    def windows(self, layout: TokenLayout):
        """Per axis ``(lo, hi, dilation)``: every query's window is the whole axis."""
        return [(torch.zeros(n, dtype=torch.int64), torch.full((n,), n - 1, dtype=torch.int64), 1)
                for n in layout.grid]

    def video_mask(self, layout, q=None, k=None):
        n = layout.video_len
        return torch.ones(n, n, dtype=torch.bool)

    def density(self, layout, *, exact=False):
        return 1.0


@dataclass(frozen=True)
class Neighborhood(Pattern):
    """3D neighborhood attention with NATTEN's non-causal ``na3d`` semantics.

    Args:
        kernel: window size per axis ``(kt, kh, kw)`` in tokens (an int broadcasts). Even
            sizes are allowed (``k // 2`` keys before the centre, ``k // 2 - 1`` after).
            A kernel larger than its axis covers the whole axis.
        dilation: per-axis dilation; tokens attend within their dilation group only.
        stride: per-axis stride (Generalized Neighborhood Attention): stride groups share
            the window of their centre query. Must not exceed the kernel.
    """

    kind: ClassVar[str] = "neighborhood"
    kernel: Triple
    dilation: Triple = (1, 1, 1)
    stride: Triple = (1, 1, 1)
    far: Optional[FarField] = None

    def __post_init__(self):
        object.__setattr__(self, "far", FarField.of(self.far))
        kernel = as_triple("kernel", self.kernel)
        dilation = as_triple("dilation", self.dilation)
        stride = as_triple("stride", self.stride)
        for axis, (s, k) in enumerate(zip(stride, kernel)):
            if s > k:
                raise ValueError(f"stride={stride} exceeds kernel={kernel} on axis {axis}; "
                                 "each stride entry must be <= the kernel entry")
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "dilation", dilation)
        object.__setattr__(self, "stride", stride)
        self._set_spec()

    def exact_part(self) -> "Neighborhood":
        if self.far is None:
            return self
        return Neighborhood(kernel=self.kernel, dilation=self.dilation, stride=self.stride)

    def windows(self, layout: TokenLayout):
        """Per axis ``(lo, hi, dilation)`` window tables for ``layout.grid``."""
        return [
            (*axis_windows(n, k, d, s), d)
            for n, k, d, s in zip(layout.grid, self.kernel, self.dilation, self.stride)
        ]

    def video_mask(self, layout, q=None, k=None):
        (mt, mh, mw) = [axis_mask(lo, hi, d) for lo, hi, d in self.windows(layout)]
        t, h, w = layout.grid
        m = mt[:, None, None, :, None, None] & mh[None, :, None, None, :, None] & mw[None, None, :, None, None, :]
        return m.reshape(t * h * w, t * h * w)


@dataclass(frozen=True)
class SlidingTile(Neighborhood):
    """Sliding tile attention: tiles of ``tile`` tokens attend to ``window`` tiles around them.

    Per axis, the grid is cut into tiles of ``tile`` tokens (from coordinate 0; the last tile
    is ragged when the tile does not divide the axis). A query in tile ``q`` attends to the
    ``window * tile`` keys that start at the first token of tile ``q - window // 2``: the
    tiles ``q - window // 2`` to ``q - window // 2 + window - 1``, so an even window has one
    tile more before the query's tile than after it (NATTEN's rule for even kernels, applied
    to tiles). Near the ends of the axis the window is shifted to stay inside it, as in
    NATTEN and STA, so every query sees ``min(window * tile, axis)`` keys per axis; a window
    larger than the axis covers it. On an axis that the tile divides the window is always
    whole tiles, so every block of ``tile`` tokens the kernels touch is kept whole; on a
    ragged axis the windows shifted back from its far end keep ``window * tile`` keys and so
    start inside a tile (odd windows always did).

    Odd windows are exactly ``Neighborhood(kernel=tile * window, stride=tile)`` on every
    grid (a strided neighbourhood centres its window on the centre token of the query's
    tile, which for an odd window starts it at the first token of tile ``q - window // 2``).
    Even windows are not: that strided rule centres ``tile * window`` keys on the tile's
    centre token, half a tile off the tile grid. Tile 4, window 2, on an axis of 16 tokens
    (4 tiles)::

        query tokens   this rule (tiles)      strided rule (keys)
        0-3            0-7    (tiles 0, 1)    0-7
        4-7            0-7    (tiles 0, 1)    2-9    (tiles 0 and 2 cut)
        8-11           4-11   (tiles 1, 2)    6-13
        12-15          8-15   (tiles 2, 3)    8-15

    Sliding-tile patterns of plans before format version 4 ran the strided rule; such a plan
    loads them as that ``Neighborhood`` (:mod:`dit_sparse.plan`), which also remains the
    way to ask for the strided rule (:meth:`as_neighborhood`).

    STA's published window configurations (FastVideo, e.g. ``1x6x10`` or ``3x1x10`` tiles
    of 6x8x8 tokens on a 5x6x10-tile latent) use even windows only where the window spans
    the whole axis, which both rules (and STA's kernels) read as the whole axis. For a
    smaller even window, STA's kernels take ``window // 2`` tiles on *both* sides of the
    query's tile (``window + 1`` tiles); here the window holds ``window`` tiles, like odd
    ones. ``far``: a :class:`FarField` for the tiles outside the window.
    """

    kind: ClassVar[str] = "sliding_tile"
    tile: Triple = (1, 1, 1)
    window: Triple = (1, 1, 1)

    def __init__(self, tile, window, far=None):
        tile = as_triple("tile", tile)
        window = as_triple("window", window)
        object.__setattr__(self, "tile", tile)
        object.__setattr__(self, "window", window)
        super().__init__(kernel=tuple(t * w for t, w in zip(tile, window)), stride=tile, far=far)

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "tile": list(self.tile), "window": list(self.window)}
        if self.far is not None:
            out["far"] = self.far.to_dict()
        return out

    def __repr__(self):
        far = "" if self.far is None else f", far={self.far!r}"
        return f"SlidingTile(tile={self.tile}, window={self.window}{far})"

    def exact_part(self) -> "SlidingTile":
        return self if self.far is None else SlidingTile(self.tile, self.window)

    @staticmethod
    def axis_windows(length: int, tile: int, window: int):
        """``(lo, hi)`` window bounds of every query coordinate of one axis (int64 ``[length]``,
        absolute, inclusive): the ``tile * window`` keys from the first token of tile
        ``q // tile - window // 2``, shifted to stay inside ``[0, length)``."""
        q = torch.arange(length, dtype=torch.int64)
        size = tile * window
        lo = ((q // tile - window // 2) * tile).clamp(min=0, max=max(length - size, 0))
        return lo, (lo + size - 1).clamp(max=length - 1)

    def windows(self, layout: TokenLayout):
        """Per axis ``(lo, hi, 1)`` window tables for ``layout.grid`` (the class docstring's rule)."""
        return [(*self.axis_windows(n, t, w), 1) for n, t, w in zip(layout.grid, self.tile, self.window)]

    def as_neighborhood(self) -> Neighborhood:
        """The strided rule ``Neighborhood(kernel=tile * window, stride=tile)`` with this far
        field: the same attention when every window entry is odd; for even entries, the rule
        that sliding tiles of plans before format version 4 ran."""
        return Neighborhood(kernel=self.kernel, stride=self.stride, far=self.far)


@dataclass(frozen=True)
class BlockSparse(Pattern):
    """Data-dependent block-sparse attention from block-mean-pooled q and k.

    Args:
        block: 3D block ``(bt, bh, bw)`` in tokens (an int broadcasts).
        topk: fraction in (0, 1] of key blocks kept per query block (rounded up).
        threshold: in (0, 1]: keep the fewest key blocks whose pooled softmax mass reaches it.

        far: a :class:`FarField`: the key blocks a query block does not keep are summarised
            by pooled boxes instead of dropped (PSA's coarse levels; a box overlapping a kept
            block is near and stays out). ``pool`` equal to ``block`` gives one pooled key
            per dropped block.

    Exactly one of ``topk`` and ``threshold``. ``topk=1.0`` or ``threshold=1.0`` is dense.
    """

    kind: ClassVar[str] = "block_sparse"
    block: Triple = (4, 8, 8)
    topk: Optional[float] = None
    threshold: Optional[float] = None
    far: Optional[FarField] = None

    def __post_init__(self):
        object.__setattr__(self, "far", FarField.of(self.far))
        object.__setattr__(self, "block", as_triple("block", self.block))
        if (self.topk is None) == (self.threshold is None):
            raise ValueError(f"BlockSparse needs exactly one of topk and threshold, got "
                             f"topk={self.topk!r}, threshold={self.threshold!r}")
        for name in ("topk", "threshold"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name}={value!r} must be a float in (0, 1]")
            if not (0.0 < value <= 1.0) or math.isnan(value):
                raise ValueError(f"{name}={value!r} must be in (0, 1]")
            object.__setattr__(self, name, float(value))
        self._set_spec()

    def exact_part(self) -> "BlockSparse":
        if self.far is None:
            return self
        return BlockSparse(block=self.block, topk=self.topk, threshold=self.threshold)

    def video_mask(self, layout, q=None, k=None):
        if q is None or k is None:
            raise ValueError("BlockSparse.mask needs q and k (the selection depends on them)")
        grid = BlockGrid(layout.grid, self.block)
        sel = block_sparse_select(self, layout, grid, q, k)  # [B, H, nb, nb] bool
        tok2blk = grid.token_block()  # [n]
        return sel[:, :, tok2blk][:, :, :, tok2blk]

    def density(self, layout, *, exact=False, q=None, k=None):
        """Density of the selection; needs ``q`` and ``k`` unless ``topk`` is set. A far
        field adds its pooled keys: counted exactly from ``q`` and ``k``, else estimated as
        the boxes outside the kept share of the grid (``(1 - topk)`` of them)."""
        grid = BlockGrid(layout.grid, self.block)
        sizes = grid.block_sizes().double()
        far = None if self.far is None else block_far_for(self, layout)
        if q is not None and k is not None:
            sel = block_sparse_select(self.exact_part(), layout, grid, q, k)
            video_pairs = (sizes[:, None] * sel.double() * sizes[None, :]).sum((-1, -2)).mean().item()
            if far is not None:
                video_pairs += far.pooled_pairs(sel).mean().item()
        elif self.topk is not None:
            nb = grid.num_blocks
            keep = min(nb, max(1, math.ceil(self.topk * nb)))
            video_pairs = layout.video_len ** 2 * keep / nb
            if far is not None:
                video_pairs += layout.video_len * far.num_boxes * (1 - keep / nb)
        else:
            raise ValueError("BlockSparse(threshold=...).density needs q and k: the selection "
                             "depends on the data")
        s = layout.seq_len
        return (video_pairs + s * s - layout.video_len ** 2) / (s * s)


PATTERN_SPEC_HELP = """\
pattern spec: KIND or KIND:FIELD=VALUE,...  A size is one int (every axis) or TxHxW
ints joined by x, each >= 1; a fraction is a number in (0, 1].
  full                                     dense attention; no fields
  neighborhood:kernel=3x9x9,stride=1x3x3   a window of kernel tokens around each query;
                                           dilation= and stride= sizes are optional
  sliding-tile:tile=4x8x8,window=3x3x3     tiles of tile tokens attend to window tiles
                                           (an even window: one tile more before the
                                           query's tile than after; always whole tiles)
  neighborhood:kernel=3x9x9,far=1x8x8      far=POOL (any kind but full): keys outside
                                           the pattern count as one pooled key per box
                                           of POOL tokens instead of none; sinks=N
                                           keeps N far keys per head exact
  block-sparse:block=4x8x8,topk=0.2        per query block, the top 20% of key blocks;
                                           or threshold=0.9: the fewest key blocks that
                                           hold 90% of the pooled softmax mass
"""


class _SpecKind(NamedTuple):
    """The spec-string fields of one pattern kind (the fields of its dataclass)."""

    fields: Dict[str, Tuple[str, str]]  # name -> (form: "size" or "fraction", example value)
    required: Tuple[Tuple[str, ...], ...]  # groups of fields; exactly one of each must be given


_SPEC_KINDS: Dict[str, _SpecKind] = {
    "full": _SpecKind({}, ()),
    "neighborhood": _SpecKind(
        {"kernel": ("size", "3x9x9"), "dilation": ("size", "1x2x2"), "stride": ("size", "1x3x3"),
         "far": ("size", "1x8x8"), "sinks": ("count", "16")},
        (("kernel",),)),
    "sliding_tile": _SpecKind(
        {"tile": ("size", "4x8x8"), "window": ("size", "3x3x3"), "far": ("size", "1x8x8"),
         "sinks": ("count", "16")},
        (("tile",), ("window",))),
    "block_sparse": _SpecKind(
        {"block": ("size", "4x8x8"), "topk": ("fraction", "0.2"), "threshold": ("fraction", "0.9"),
         "far": ("size", "1x8x8"), "sinks": ("count", "16")},
        (("topk", "threshold"),)),
}


def _spec_size(name: str, text: str, example: str):
    """``text`` as an int or a 3-tuple of ints, every entry >= 1 (``as_triple``'s rule)."""
    form = f"must be an int or TxHxW ints (e.g. {name}={example})"
    try:
        values = tuple(int(part) for part in text.split("x"))
    except ValueError:
        raise ValueError(f"{name}={text!r} {form}") from None
    if len(values) not in (1, 3):
        raise ValueError(f"{name}={text!r} has {len(values)} entries; {form}")
    if min(values) < 1:
        raise ValueError(f"{name}={text.strip()}: every entry must be >= 1")
    return values[0] if len(values) == 1 else values


def _spec_fraction(name: str, text: str, example: str) -> float:
    """``text`` as a float in (0, 1] (``BlockSparse``'s rule for topk and threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} must be a number in (0, 1] (e.g. {name}={example})") from None
    if not 0.0 < value <= 1.0:  # also refuses nan
        raise ValueError(f"{name}={text.strip()} must be in (0, 1]")
    return value


def _spec_count(name: str, text: str, example: str) -> int:
    """``text`` as an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} must be an int >= 1 (e.g. {name}={example})") from None
    if value < 1:
        raise ValueError(f"{name}={text.strip()} must be >= 1")
    return value


_SPEC_FORMS = {"size": _spec_size, "fraction": _spec_fraction, "count": _spec_count}


def _parse_spec(kind: str, rest: str) -> Pattern:
    """The pattern of ``kind`` from the ``field=value,...`` part of a spec string; every
    error is one line that names the field (``parse_pattern`` adds the spec)."""
    shown = kind.replace("_", "-")
    table = _SPEC_KINDS[kind]
    allowed = (f"{shown} fields: {', '.join(table.fields)}" if table.fields else f"{shown} takes no fields")
    kwargs: dict = {}
    texts: Dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"{item!r} is not field=value; {allowed}")
        if key not in table.fields:
            raise ValueError(f"unknown field {key!r}; {allowed}")
        if key in texts:
            raise ValueError(f"{key}= is given twice ({key}={texts[key]} and {key}={text.strip()})")
        texts[key] = text.strip()
        form, example = table.fields[key]
        kwargs[key] = _SPEC_FORMS[form](key, text, example)
    needs = [f"{group[0]}=" if len(group) == 1 else "one of " + " or ".join(f"{f}=" for f in group)
             for group in table.required]
    missing = [n for n, group in zip(needs, table.required) if not any(f in kwargs for f in group)]
    if missing:
        where = f" ({' and '.join(missing)} missing)" if len(missing) < len(needs) else ""
        raise ValueError(f"{shown} needs {' and '.join(needs)}{where}")
    for group in table.required:
        given = [f"{f}=" for f in group if f in kwargs]
        if len(given) > 1:
            raise ValueError(f"{shown} takes only one of {' and '.join(given)}")
    if "sinks" in kwargs:  # a part of the far field
        if "far" not in kwargs:
            raise ValueError(f"sinks={kwargs['sinks']} needs far= (sinks are exact keys of the far field)")
        kwargs["far"] = FarField(kwargs["far"], kwargs.pop("sinks"))
    return _REGISTRY[kind](**kwargs)  # rules across fields (stride <= kernel) are the dataclass's


def parse_pattern(value) -> Pattern:
    """A pattern from a Pattern, a dict (``to_dict`` form) or a spec string.

    Spec strings (syntax in :data:`PATTERN_SPEC_HELP`): ``full``,
    ``neighborhood:kernel=3x9x9[,dilation=..][,stride=..]``,
    ``sliding-tile:tile=4x8x8,window=3x3x3``, ``block-sparse:block=4x8x8,topk=0.2``.
    A bad spec raises a one-line ValueError that names the field, its value and the
    allowed form.
    """
    if isinstance(value, Pattern):
        return value
    if isinstance(value, dict):
        return Pattern.from_dict(value)
    if not isinstance(value, str):
        raise TypeError(f"pattern={value!r} must be a Pattern, a dict or a spec string")
    name, _, rest = value.strip().partition(":")
    kind = name.strip().lower().replace("-", "_")
    if kind not in _REGISTRY:
        kinds = ", ".join(sorted(k.replace("_", "-") for k in _REGISTRY))
        raise ValueError(f"unknown pattern spec {value!r}: kind {name.strip()!r} is not one of {kinds}")
    try:
        return _parse_spec(kind, rest)
    except ValueError as exc:
        raise ValueError(f"pattern spec {value!r}: {exc}") from None
