"""Choosing a pattern per layer and head from measured errors: the pure half of profiling.

Profiling (``dit_sparse.profile``, in ``pipelines/profiling.py``) runs a model densely and,
inside every self-attention call at the sampled denoising steps, compares each candidate
pattern's output with the dense output (:func:`candidate_errors`). That fills an
:class:`ErrorTable`: for every sampled step, layer, head and candidate the relative L2
error ``||sparse - dense|| / ||dense||`` over the head's tokens, and for every layer, head
and candidate the density (fraction of query-key pairs computed, at block granularity).
Errors of several steps (and several calls of a step: prompts, seeds, CFG halves) are
combined as a root mean square of the relative errors, weighting each call by its dense
norm (``sqrt(sum ||diff||^2 / sum ||dense||^2)``).

Two selection rules, both deterministic:

* :func:`select_max_error`: per layer and head, the cheapest (lowest density) candidate whose
  error is at most ``max_error``; ties go to the lower error, then to the earlier candidate.
  A cell where no candidate qualifies takes its lowest-error candidate (``Full`` has error 0,
  and profiling always includes it).
* :func:`select_budget`: minimise the summed error subject to a mean density over all layers
  and heads of at most ``budget``. This is a multiple-choice knapsack; it is solved greedily:
  every cell starts at its cheapest candidate, and upgrades along each cell's lower convex
  hull of (density, error) are taken in order of error saved per density spent, skipping
  upgrades that no longer fit (the optimum of the fractional relaxation, rounded down). A
  final pass spends what is left on the single switch that saves the most error, repeatedly;
  the result is never worse than the best single candidate used everywhere within budget.
  A budget below the mean density of the cheapest candidates is an error.

:func:`choose_dense_steps` then decides how many early steps stay dense: the leading sampled
steps whose error under the chosen patterns exceeds a bound (capped at a fraction of the
schedule) under the patterns chosen for the later steps. :func:`select` runs the whole thing
and selects again on the steps that run sparse.

:func:`default_candidates` builds the default candidate list from the profiled grid:
windows are chosen as fractions of the grid's axes but stored in tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .layout import TokenLayout, as_triple
from .patterns import BlockSparse, Full, Neighborhood, Pattern, SlidingTile

# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------


def check_mode(max_error, budget) -> Tuple[str, float]:
    """``("max_error", value)`` or ``("budget", value)``; exactly one must be given."""
    if (max_error is None) == (budget is None):
        raise ValueError(f"give exactly one of max_error and budget, got max_error={max_error!r}, budget={budget!r}")
    name, value = ("max_error", max_error) if max_error is not None else ("budget", budget)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}={value!r} must be a number")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name}={value!r} must be >= 0")
    if name == "budget" and not 0.0 < value <= 1.0:
        raise ValueError(f"budget={value!r} must be a mean density in (0, 1]")
    if name == "max_error" and math.isinf(value):
        raise ValueError(f"max_error={value!r} must be finite")
    return name, value


def check_cost(cost) -> str:
    """``cost`` of :func:`select`: ``"density"`` or ``"time"``."""
    if cost not in ("density", "time"):
        raise ValueError(f"cost={cost!r} must be 'density' or 'time'")
    return cost


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


def head_density(pattern: Pattern, layout: TokenLayout, q: Optional[torch.Tensor] = None,
                 k: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """Density of ``pattern`` for each head: ``[heads]`` float64.

    Static patterns have one density for every head (``pattern.density(layout)``); a
    :class:`BlockSparse` selection depends on the head's q and k (``[B, S, heads, D]``) and
    is averaged over the batch (a far field's pooled keys counted like
    :meth:`BlockSparse.density`).
    """
    if not isinstance(pattern, BlockSparse):
        heads = 1 if q is None else q.shape[2]
        return torch.full((heads,), float(pattern.density(layout)), dtype=torch.float64)
    from .tiling import BlockGrid, block_sparse_select

    if q is None or k is None:
        raise ValueError(f"{pattern!r}: a per-head density needs q and k")
    grid = BlockGrid(layout.grid, pattern.block)
    sizes = grid.block_sizes().double()
    sel = block_sparse_select(pattern, layout, grid, q, k, scale)  # [B, H, nb, nb]
    video_pairs = (sizes[:, None] * sel.double() * sizes[None, :]).sum((-1, -2)).mean(0)  # [H]
    if pattern.far is not None:  # one pooled key per box the query block does not hold near
        from .farfield import block_far_for

        video_pairs = video_pairs + block_far_for(pattern, layout).pooled_pairs(sel).mean(0)
    s, n = layout.seq_len, layout.video_len
    return (video_pairs + s * s - n * n) / (s * s)


def candidate_errors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, candidates: Sequence[Pattern],
                     layout: TokenLayout, *, key_mask: Optional[torch.Tensor] = None,
                     scale: Optional[float] = None, dense: Optional[torch.Tensor] = None):
    """Squared errors of every candidate against dense attention, per head.

    Args:
        q, k, v: ``[B, S, heads, head_dim]``, one self-attention call.
        candidates: the patterns to compare.
        dense: the dense output if already computed (``[B, S, heads, head_dim]``).
    Returns:
        ``(dense, diff_sq [heads, C], dense_sq [heads], density [heads, C])`` (float64 except
        ``dense``): ``diff_sq[h, c] = ||out_c - dense||^2`` and ``dense_sq[h] = ||dense||^2``
        over head ``h``'s batch, tokens and channels. Every candidate runs all heads in one
        :func:`dit_sparse.sparse_attention` call.
    """
    from .ops import sparse_attention

    if dense is None:
        dense = sparse_attention(q, k, v, Full(), layout, key_mask=key_mask, scale=scale)
    ref = dense.double()
    dense_sq = ref.pow(2).sum((0, 1, 3))
    heads = q.shape[2]
    diff_sq = torch.zeros(heads, len(candidates), dtype=torch.float64)
    density = torch.zeros(heads, len(candidates), dtype=torch.float64)
    for c, pattern in enumerate(candidates):
        if isinstance(pattern, Full):
            out = dense
        else:
            out = sparse_attention(q, k, v, pattern, layout, key_mask=key_mask, scale=scale)
        diff_sq[:, c] = (out.double() - ref).pow(2).sum((0, 1, 3))
        density[:, c] = head_density(pattern, layout, q, k, scale)
    return dense, diff_sq, dense_sq, density


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


@dataclass
class ErrorTable:
    """Measured errors and densities of every candidate.

    Attributes:
        layers: layer names, ``L`` of them.
        heads: heads per layer, ``H``.
        candidates: the ``C`` candidate patterns.
        steps: the ``N`` sampled denoising steps, increasing.
        errors: ``[N, L, H, C]`` relative L2 error of each candidate at each sampled step.
        density: ``[L, H, C]`` density of each candidate (mean over the sampled calls).
        weights: ``[N, L, H]`` squared dense norm of each step's calls (how much each step
            counts when steps are combined); ``None`` counts steps equally.
        time: ``[C]`` each candidate's measured kernel time relative to dense attention on
            the profiled shape and device (``Full`` is 1), or ``None`` when not measured;
            ``select(..., cost="time")`` uses it in place of the density.
    """

    layers: Tuple[str, ...]
    heads: int
    candidates: Tuple[Pattern, ...]
    steps: Tuple[int, ...]
    errors: torch.Tensor
    density: torch.Tensor
    weights: Optional[torch.Tensor] = None
    time: Optional[torch.Tensor] = None

    def __post_init__(self):
        self.layers = tuple(self.layers)
        self.candidates = tuple(self.candidates)
        self.steps = tuple(int(s) for s in self.steps)
        self.errors = torch.as_tensor(self.errors, dtype=torch.float64)
        self.density = torch.as_tensor(self.density, dtype=torch.float64)
        n, l, h, c = len(self.steps), len(self.layers), self.heads, len(self.candidates)
        if l == 0 or c == 0 or n == 0:
            raise ValueError(f"an error table needs at least one layer, candidate and step, got {l=}, {c=}, {n=}")
        if tuple(self.errors.shape) != (n, l, h, c):
            raise ValueError(f"errors shape {tuple(self.errors.shape)} must be [steps, layers, heads, "
                             f"candidates] = {(n, l, h, c)}")
        if tuple(self.density.shape) != (l, h, c):
            raise ValueError(f"density shape {tuple(self.density.shape)} must be [layers, heads, candidates] "
                             f"= {(l, h, c)}")
        if list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"steps={self.steps} must be strictly increasing")
        if self.weights is not None:
            self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
            if tuple(self.weights.shape) != (n, l, h):
                raise ValueError(f"weights shape {tuple(self.weights.shape)} must be {(n, l, h)}")
        if self.time is not None:
            self.time = torch.as_tensor(self.time, dtype=torch.float64)
            if tuple(self.time.shape) != (c,) or not torch.isfinite(self.time).all() or (self.time <= 0).any():
                raise ValueError(f"time must be [candidates] = ({c},) positive finite relative times, "
                                 f"got {self.time.tolist()}")
        if not torch.isfinite(self.errors).all() or (self.errors < 0).any():
            raise ValueError("errors must be finite and >= 0")
        if not torch.isfinite(self.density).all() or (self.density < 0).any() or (self.density > 1 + 1e-9).any():
            raise ValueError("densities must be in [0, 1]")

    def combined(self, first_step: int = 0, end_step: Optional[int] = None) -> torch.Tensor:
        """``[L, H, C]`` error over the sampled steps in ``[first_step, end_step)`` (weighted
        RMS); with none there, the last sampled step ``>= first_step`` (or the last one)."""
        keep = torch.tensor([s >= first_step and (end_step is None or s < end_step) for s in self.steps])
        if not keep.any() and end_step is not None:
            keep = torch.tensor([s >= first_step for s in self.steps])
        if not keep.any():
            keep = torch.zeros(len(self.steps), dtype=torch.bool)
            keep[-1] = True
        errors = self.errors[keep]
        w = torch.ones(errors.shape[:3], dtype=torch.float64) if self.weights is None else self.weights[keep]
        total = w.sum(0)
        w = torch.where(total > 0, w / total.clamp_min(1e-300), torch.full_like(w, 1.0 / w.shape[0]))
        return (errors.pow(2) * w[..., None]).sum(0).sqrt()


# --------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------


def _check_grids(errors: torch.Tensor, density: torch.Tensor):
    errors = torch.as_tensor(errors, dtype=torch.float64)
    density = torch.as_tensor(density, dtype=torch.float64)
    if errors.dim() != 3 or errors.shape != density.shape:
        raise ValueError(f"errors {tuple(errors.shape)} and density {tuple(density.shape)} must both be "
                         "[layers, heads, candidates]")
    if errors.shape[-1] == 0:
        raise ValueError("no candidates to choose from")
    return errors, density


def _order_key(errors, density, cell, c):
    return (float(density[cell][c]), float(errors[cell][c]), c)


def select_max_error(errors, density, max_error: float) -> torch.Tensor:
    """Per cell, the cheapest candidate with ``error <= max_error``.

    Args:
        errors, density: ``[L, H, C]``.
    Returns:
        ``[L, H]`` int64 candidate indices. Ties: lower density, then lower error, then the
        earlier candidate. A cell with no qualifying candidate takes the lowest error (then
        lower density, then earlier).
    """
    errors, density = _check_grids(errors, density)
    _, max_error = check_mode(max_error, None)
    l, h, c = errors.shape
    choice = torch.zeros(l, h, dtype=torch.int64)
    for i in range(l):
        for j in range(h):
            ok = [x for x in range(c) if errors[i, j, x] <= max_error]
            if ok:
                choice[i, j] = min(ok, key=lambda x: (float(density[i, j, x]), float(errors[i, j, x]), x))
            else:
                choice[i, j] = min(range(c), key=lambda x: (float(errors[i, j, x]), float(density[i, j, x]), x))
    return choice


def _cheapest(errors, density, i, j) -> int:
    return min(range(errors.shape[-1]), key=lambda x: (float(density[i, j, x]), float(errors[i, j, x]), x))


def _hull(errors, density, i, j, start: int) -> List[int]:
    """Candidates on the lower convex hull of (density, error) from ``start`` rightwards."""
    path = [start]
    cur = start
    c = errors.shape[-1]
    while True:
        best, best_key = None, None
        for x in range(c):
            dd = float(density[i, j, x] - density[i, j, cur])
            de = float(errors[i, j, x] - errors[i, j, cur])
            if dd <= 0 or de >= 0:
                continue
            key = (de / dd, dd, x)  # steepest descent first; on a tie the nearer point
            if best_key is None or key < best_key:
                best, best_key = x, key
        if best is None:
            return path
        path.append(best)
        cur = best


def select_budget(errors, density, budget: float, what: str = "density") -> torch.Tensor:
    """Minimise the summed error with mean density (over all cells) ``<= budget``.

    Greedy over each cell's lower convex hull (module docstring), then a fill pass.

    Args:
        errors, density: ``[L, H, C]`` (``density`` may be any cost, e.g. relative kernel time).
        what: the cost's name in the error message.
    Returns:
        ``[L, H]`` int64 candidate indices.
    Raises:
        ValueError: when even the cheapest candidate of every cell exceeds the budget.
    """
    errors, density = _check_grids(errors, density)
    _, budget = check_mode(None, budget)
    l, h, c = errors.shape
    cells = [(i, j) for i in range(l) for j in range(h)]
    choice = {cell: _cheapest(errors, density, *cell) for cell in cells}
    capacity = budget * len(cells) + 1e-9 * len(cells)
    spent = sum(float(density[i, j, choice[(i, j)]]) for i, j in cells)
    if spent > capacity:
        floor = spent / len(cells)
        raise ValueError(f"budget={budget} is impossible: the cheapest candidates already have a mean {what} of "
                         f"{floor:.4f}; give a budget >= {floor:.4f} or cheaper candidates")

    moves = []
    for i, j in cells:
        path = _hull(errors, density, i, j, choice[(i, j)])
        for rank, (a, b) in enumerate(zip(path, path[1:])):
            dd = float(density[i, j, b] - density[i, j, a])
            de = float(errors[i, j, a] - errors[i, j, b])
            moves.append((-de / dd, i, j, rank, a, b, dd))
    moves.sort()
    blocked = set()
    for _, i, j, rank, a, b, dd in moves:
        if (i, j) in blocked or choice[(i, j)] != a:
            continue
        if spent + dd <= capacity:
            choice[(i, j)] = b
            spent += dd
        else:
            blocked.add((i, j))

    while True:  # fill pass: the single switch that saves the most error and still fits
        best, best_key = None, None
        for i, j in cells:
            a = choice[(i, j)]
            for x in range(c):
                de = float(errors[i, j, a] - errors[i, j, x])
                dd = float(density[i, j, x] - density[i, j, a])
                if de <= 0 or spent + dd > capacity:
                    continue
                key = (-de, dd, i, j, x)
                if best_key is None or key < best_key:
                    best, best_key = (i, j, x, dd), key
        if best is None:
            break
        i, j, x, dd = best
        choice[(i, j)] = x
        spent += dd

    out = torch.zeros(l, h, dtype=torch.int64)
    for (i, j), x in choice.items():
        out[i, j] = x
    # Safeguard: never worse than the best single candidate used everywhere that fits.
    total = errors.gather(-1, out[..., None]).sum()
    for x in range(c):
        if float(density[..., x].sum()) <= capacity and float(errors[..., x].sum()) < float(total) - 1e-12:
            out.fill_(x)
            total = errors[..., x].sum()
    return out


def step_errors(table: ErrorTable, choice: torch.Tensor) -> torch.Tensor:
    """``[N]``: RMS over layers and heads of the chosen candidates' error at each sampled step."""
    idx = choice[None, :, :, None].expand(len(table.steps), -1, -1, 1)
    chosen = table.errors.gather(-1, idx)[..., 0]  # [N, L, H]
    return chosen.pow(2).mean((1, 2)).sqrt()


def choose_dense_steps(per_step: Sequence[float], steps: Sequence[int], bound: float,
                       max_dense: int) -> int:
    """How many early steps run dense.

    ``per_step[i]`` is the error of the chosen patterns at sampled step ``steps[i]``. The
    leading sampled steps whose error exceeds ``bound`` stay dense; the warm-up ends at the
    first sampled step within the bound (steps between samples count with the later one),
    and never exceeds ``max_dense``.
    """
    dense = 0
    for i, (err, step) in enumerate(zip(per_step, steps)):
        if float(err) <= bound:
            dense = step
            break
    else:
        dense = steps[-1] + 1 if len(steps) else 0
    return int(max(0, min(dense, max_dense)))


@dataclass
class Selection:
    """The outcome of :func:`select`.

    Attributes:
        choice: ``[L, H]`` candidate index per layer and head.
        errors, density: ``[L, H]`` error and density of the chosen candidates (errors over
            the sampled steps that run sparse).
        dense_steps: early steps that run dense.
        step_errors: ``[N]`` error of the chosen patterns at each sampled step.
        mode, value: ``"max_error"`` or ``"budget"`` and its value.
        dense_bound: the per-step error above which a leading step stays dense.
        phases: one :class:`PhaseSelection` per later phase (``select(..., phases=)``).
        step_errors is of the final choice (the first phase's patterns at every sampled
        step); the warm-up was decided on the reference choice.
    """

    choice: torch.Tensor
    errors: torch.Tensor
    density: torch.Tensor
    dense_steps: int
    step_errors: torch.Tensor
    mode: str
    value: float
    dense_bound: float
    phases: Tuple["PhaseSelection", ...] = ()


@dataclass
class PhaseSelection:
    """A later phase of a :class:`Selection`: from ``start`` (a step) on, ``choice`` (with
    its ``errors`` and ``density``, ``[L, H]``, over the phase's sampled steps) chosen
    under ``value`` (a ``max_error`` or ``budget`` like the selection's mode)."""

    start: int
    value: float
    choice: torch.Tensor
    errors: torch.Tensor
    density: torch.Tensor


def check_phases(phases, mode: str) -> List[Tuple[int, float]]:
    """``[(start_step, value), ...]`` validated: ints >= 1 strictly increasing, values valid
    for ``mode`` (an error bound >= 0, or a budget in (0, 1])."""
    out = []
    for i, item in enumerate(phases or ()):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"phases[{i}]={item!r} must be a (start_step, {mode}) pair")
        start, value = item
        if isinstance(start, bool) or not isinstance(start, int) or start < 1:
            raise ValueError(f"phases[{i}] start step {start!r} must be an int >= 1")
        if out and start <= out[-1][0]:
            raise ValueError(f"phases[{i}] start step {start} must be larger than the previous one ({out[-1][0]})")
        check_mode(value if mode == "max_error" else None, value if mode == "budget" else None)
        out.append((start, float(value)))
    return out


def select(table: ErrorTable, *, max_error: Optional[float] = None, budget: Optional[float] = None,
           num_steps: Optional[int] = None, dense_bound: Optional[float] = None,
           max_dense_fraction: float = 0.5, per_head: bool = True, cost: str = "density",
           phases: Optional[Sequence[Tuple[int, float]]] = None) -> Selection:
    """Choose per layer and head patterns and the dense warm-up from an :class:`ErrorTable`.

    1. Select on the later half of the sampled steps (:func:`select_max_error` or
       :func:`select_budget`) and measure that choice's error at every sampled step.
    2. Dense warm-up (:func:`choose_dense_steps`): the leading steps whose error exceeds
       ``dense_bound`` (default ``max_error``, or in budget mode twice the median error of
       the later half), at most ``max_dense_fraction`` of ``num_steps`` (default: last
       sampled step + 1).
    3. Select again on all sampled steps that run sparse.

    With ``per_head=False`` every layer gets one pattern for all its heads, chosen on the
    heads' root-mean-square error (and mean density): on CPU a layer whose heads share a
    pattern is one kernel call, a mixed layer one call per run of equal heads.

    ``cost="time"`` ranks candidates by their measured kernel time (``table.time``, relative
    to dense) instead of their density, and ``budget`` is then a mean relative time: kernels
    differ in how close they come to 1 / density (docs/benchmarks.md), so the cheapest
    pattern by density need not be the fastest.

    ``phases``: ``[(start_step, value), ...]`` splits the sparse steps at those steps; the
    first phase (from the warm-up on) is chosen under ``max_error``/``budget`` on its own
    sampled steps, each later phase under its ``value`` (same mode) on its own. Late steps
    refine what the early ones laid out and tolerate more error (end to end on the embedded
    model: docs/benchmarks.md), so a larger bound there buys speed cheaply.
    """
    mode, value = check_mode(max_error, budget)
    phases = check_phases(phases, mode)
    check_cost(cost)
    if cost == "time" and table.time is None:
        raise ValueError("cost='time' needs measured kernel times (profile(..., cost='time') or "
                         "measure(..., time_kernels=True))")
    if not 0.0 <= max_dense_fraction <= 1.0:
        raise ValueError(f"max_dense_fraction={max_dense_fraction!r} must be in [0, 1]")
    num_steps = table.steps[-1] + 1 if num_steps is None else int(num_steps)

    def run(first_step, end_step=None, bound=value):
        errors = table.combined(first_step, end_step)
        density = table.density if cost == "density" else table.time.expand_as(table.density)
        if not per_head:
            errors, density = errors.pow(2).mean(1, keepdim=True).sqrt(), density.mean(1, keepdim=True)
        if mode == "max_error":
            choice = select_max_error(errors, density, bound)
        else:
            choice = select_budget(errors, density, bound, "density" if cost == "density" else "relative time")
        return choice.expand(-1, table.heads).contiguous()

    def chosen(choice, first_step, end_step=None):
        combined = table.combined(first_step, end_step)
        return (combined.gather(-1, choice[..., None])[..., 0],
                table.density.gather(-1, choice[..., None])[..., 0])

    for start, _ in phases:
        if start > table.steps[-1]:
            raise ValueError(f"phase start step {start} is after the last sampled step ({table.steps[-1]}): "
                             "sample the steps of every phase")

    # The reference: patterns chosen for the later half of the first phase's sampled steps,
    # which run sparse whatever the warm-up; early steps they do not fit stay dense.
    first_start = phases[0][0] if phases else None
    n_first = sum(1 for s in table.steps if first_start is None or s < first_start) or len(table.steps)
    half = table.steps[n_first // 2]
    per_step = step_errors(table, run(half, first_start))
    if dense_bound is None:
        late = per_step[n_first // 2:n_first]
        dense_bound = value if mode == "max_error" else 2.0 * float(late.median())
    max_dense = math.floor(max_dense_fraction * num_steps)
    dense = choose_dense_steps(per_step.tolist(), table.steps, dense_bound, max_dense)
    ends = [start for start, _ in phases] + [None]
    first_end = ends[0] if ends[0] is not None and ends[0] > dense else None
    choice = run(dense, first_end)
    per_step = step_errors(table, choice)
    chosen_err, chosen_den = chosen(choice, dense, first_end)
    later = []
    for (start, bound), end in zip(phases, ends[1:]):
        first = max(start, dense)
        c = run(first, end, bound)
        later.append(PhaseSelection(start, bound, c, *chosen(c, first, end)))
    return Selection(choice, chosen_err, chosen_den, dense, per_step, mode, value, float(dense_bound), tuple(later))


# --------------------------------------------------------------------------------------
# Default candidates
# --------------------------------------------------------------------------------------


def _odd_fraction(n: int, fraction: float, minimum: int = 1) -> int:
    """About ``fraction * n`` tokens, odd (centred windows), between ``minimum`` and ``n``."""
    size = max(minimum, round(n * fraction))
    if size % 2 == 0:
        size += 1
    return min(size, n)


def _pow2_at_most(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1.0, x)))))


def default_candidates(grid) -> List[Pattern]:
    """The default candidates for a profiled ``grid`` (T, H, W).

    Windows are fractions of the grid's axes, stored in tokens:

    * :class:`Neighborhood` kernels from every combination of a temporal size in
      {1, ~T/2, T} and a spatial size in {~1/4, ~1/2, all} of H and W (odd sizes): spatial
      only (``kt = 1``), temporal only (whole frames, ``kt < T``) and 3D windows;
    * :class:`SlidingTile` with tiles of ~1/4 of H and W (powers of two) and 1 x 3 x 3 and
      3 x 3 x 3 tile windows;
    * :class:`BlockSparse` over blocks of one frame and ~1/2 of H and W (at most 8 x 8
      tokens), keeping the top 12.5 %, 25 % and 50 % of key blocks, and the first two again
      with a far field of one pooled key per dropped block;
    * the sliding tiles and the spatially local 3D neighbourhoods again with a
      :class:`~dit_sparse.patterns.FarField` of one-frame boxes of ~1/4 of H and W (powers
      of two), so that a layer (or head) whose attention reaches far keeps it pooled;
    * :class:`Full` (always last).

    Duplicates (after clamping to the grid) are dropped.
    """
    t, h, w = as_triple("grid", grid)
    t_sizes = sorted({1, _odd_fraction(t, 0.5), t})
    s_sizes = [(_odd_fraction(h, f, 3), _odd_fraction(w, f, 3)) for f in (0.25, 0.5)] + [(h, w)]
    out: List[Pattern] = []
    seen = set()

    def add(p: Pattern, footprint):
        if footprint not in seen:
            seen.add(footprint)
            out.append(p)

    for kt in t_sizes:
        for kh, kw in s_sizes:
            kernel = (kt, kh, kw)
            if kernel == (t, h, w):
                continue
            add(Neighborhood(kernel=kernel), ("nb", kernel))
    tile = (1, _pow2_at_most(h / 4), _pow2_at_most(w / 4))
    for window in ((1, 3, 3), (3, 3, 3)):
        reach = tuple(min(a * b, n) for a, b, n in zip(tile, window, (t, h, w)))
        add(SlidingTile(tile=tile, window=window), ("st", tile, reach))
    pool = (1, _pow2_at_most(h / 4), _pow2_at_most(w / 4))
    for p in list(out):
        local = isinstance(p, SlidingTile) or (isinstance(p, Neighborhood) and (p.kernel[0] > 1 or t == 1)
                                               and p.kernel[1] < h and p.kernel[2] < w)
        if local:
            add(p.__class__(p.tile, p.window, far=pool) if isinstance(p, SlidingTile)
                else Neighborhood(kernel=p.kernel, far=pool), ("far", p.spec, pool))
    # Blocks of one frame and up to 8 x 8 tokens: smaller blocks make the data-dependent
    # selection (and the CPU kernel's gathers) cost more than they save.
    block = (1, min(8, _pow2_at_most(h / 2)), min(8, _pow2_at_most(w / 2)))
    for topk in (0.125, 0.25, 0.5):
        add(BlockSparse(block=block, topk=topk), ("bs", block, topk))
    for topk in (0.125, 0.25):  # the dropped blocks pooled, one key each
        add(BlockSparse(block=block, topk=topk, far=block), ("bs-far", block, topk))
    out.append(Full())
    return out


__all__ = ["ErrorTable", "PhaseSelection", "Selection", "candidate_errors", "check_cost", "check_mode", "check_phases",
           "choose_dense_steps", "default_candidates", "head_density", "select", "select_budget", "select_max_error", "step_errors"]
