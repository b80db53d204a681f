"""``Plan``: the portable result of profiling, a versioned JSON document.

A plan says, for every self-attention layer of one model (and optionally for every head),
which pattern to run, with the error and density measured when it was chosen, plus how many
early denoising steps stay dense, and optionally later phases of the schedule with patterns
of their own. It is plain JSON (format ``"dit-sparse-plan"``, version 1; 2 when it has
phases; 3 when a pattern has a far field, ``"far": {"pool": [1, 8, 8]}``; 4 when a sliding
tile has an even window entry; 5 when a block-sparse pattern has a far field), written atomically, validated field by field on load,
never pickled::

    {
      "format": "dit-sparse-plan", "version": 1,
      "model": {"class": "WanTransformer3DModel", "name_or_path": "...", "heads": 12,
                "head_dim": 128, "layers": ["blocks.0.attn1", ...]},
      "profile": {"grid": [21, 30, 52], "text_len": 0, "num_inference_steps": 50,
                  "sampled_steps": [0, 1, ...], "height": 480, "width": 832, "num_frames": 81,
                  "seeds": [0], "num_prompts": 4, "prompts_sha256": "...", "mode": "budget",
                  "max_error": null, "budget": 0.3, "dense_bound": 0.1,
                  "versions": {"dit_sparse": "0.1.0", "torch": "...", "diffusers": "..."},
                  "candidates": [{"pattern": {...}, "error": 0.05, "density": 0.2}, ...]},
      "dense_steps": 2,
      "layers": [
        {"name": "blocks.0.attn1", "pattern": {"kind": "neighborhood", ...},
         "error": 0.03, "density": 0.21},
        {"name": "blocks.1.attn1", "error": 0.04, "density": 0.5,
         "heads": [{"pattern": {...}, "error": 0.02, "density": 0.2}, ...]},
        ...]
    }

A layer entry holds either one ``pattern`` for all heads or a ``heads`` list (one entry per
head); its ``error``/``density`` are the means over heads.

Phases (version 2): ``"phases": [{"start_step": 10, "layers": [...]}, ...]`` with
strictly increasing start steps; from its start step on (until the next phase's), a phase's
layer entries (same form as ``layers``, every layer listed, ``{"kind": "full"}`` keeps one
dense) replace the top-level ones, which run from the end of the dense warm-up. Steps are
absolute indices of the denoising loop, like ``dense_steps``. Late denoising steps, which
refine details the early ones laid out, tolerate sparser patterns (the step-wise split of
DiTFastAttn and of Sparse VideoGen's dense warm-up, carried one phase further).

``profile.candidates`` lists every candidate with its mean error and density over all layers
and heads (what each would give if applied uniformly); ``profile.phase_values`` the bounds
(or budgets) the later phases were selected under.

Sliding tiles with even windows (version 4): before version 4, a ``sliding_tile`` pattern
ran the strided rule ``Neighborhood(kernel=tile * window, stride=tile)``, whose windows are
not tile-aligned when a window entry is even; since then it runs the tile-aligned rule of
:class:`~dit_sparse.patterns.SlidingTile` (the same for odd windows). A plan of version 1
to 3 is read with the meaning it was profiled with: its even-window sliding tiles (in the
layers, the phases and ``profile.candidates``) load as that ``Neighborhood``; odd ones stay
sliding tiles. A plan that holds an even-window sliding tile is written as version 4.

Windows are stored in tokens, so a plan applies at another resolution: each query keeps its
receptive field, and a window larger than an axis covers the axis (the patterns' own
clamping). Applying at a grid other than the profiled one warns (:class:`PlanGridWarning`).

``Plan`` implements the protocol of :func:`dit_sparse.apply` (``patterns_for``,
``dense_steps``, ``phase_starts``, ``check_steps``), plus ``check_used`` (the layer set must
match), ``validate_for`` (called by ``apply`` with the target's description) and
``check_grid`` (called with each forward's grid).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .atomic import write_text
from .patterns import BlockSparse, Full, Neighborhood, Pattern, SlidingTile
from .report import format_table

FORMAT = "dit-sparse-plan"
VERSION = 5  # the newest version read; a plan is written with the oldest version that holds it
TILE_ALIGNED_VERSION = 4  # from this version on, an even-window sliding tile is tile-aligned
BLOCK_FAR_VERSION = 5  # from this version on, a block-sparse pattern may have a far field


class PlanGridWarning(UserWarning):
    """A plan is applied at a token grid other than the one it was profiled on."""


class PlanStepsWarning(UserWarning):
    """A plan with phases runs a schedule of another length than the profiled one."""


def prompts_digest(prompts: Sequence[str]) -> str:
    """sha256 of the prompts (as a JSON list): identifies them without storing them."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8")).hexdigest()


def pattern_spec(pattern: Pattern) -> str:
    """The short spec string of a pattern (``parse_pattern`` reads it back)."""
    def triple(v):
        return "x".join(str(x) for x in v)

    if isinstance(pattern, Full):
        return "full"
    far = "" if pattern.far is None else "," + pattern.far.spec
    if isinstance(pattern, SlidingTile):
        return f"sliding-tile:tile={triple(pattern.tile)},window={triple(pattern.window)}{far}"
    if isinstance(pattern, Neighborhood):
        parts = [f"kernel={triple(pattern.kernel)}"]
        if pattern.dilation != (1, 1, 1):
            parts.append(f"dilation={triple(pattern.dilation)}")
        if pattern.stride != (1, 1, 1):
            parts.append(f"stride={triple(pattern.stride)}")
        return "neighborhood:" + ",".join(parts) + far
    if isinstance(pattern, BlockSparse):
        sel = f"topk={pattern.topk!r}" if pattern.topk is not None else f"threshold={pattern.threshold!r}"
        return f"block-sparse:block={triple(pattern.block)},{sel}{far}"
    return json.dumps(pattern.to_dict(), sort_keys=True)


# --------------------------------------------------------------------------------------
# Field checks: every error names the JSON path of the offending field
# --------------------------------------------------------------------------------------


def _fail(where: str, message: str):
    raise ValueError(f"plan{where}: {message}")


def _dict(value, where: str, required: Sequence[str], optional: Sequence[str] = ()) -> dict:
    if not isinstance(value, dict):
        _fail(where, f"must be a JSON object, got {type(value).__name__}")
    missing = [k for k in required if k not in value]
    if missing:
        _fail(where, f"missing field(s) {missing}")
    extra = sorted(set(value) - set(required) - set(optional))
    if extra:
        _fail(where, f"unknown field(s) {extra}; allowed: {sorted(set(required) | set(optional))}")
    return value


def _int(value, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(where, f"must be an int >= {minimum}, got {value!r}")
    return value


def _num(value, where: str, lo: float = 0.0, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
        _fail(where, f"must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _opt_num(value, where: str, lo: float = 0.0, hi: float = math.inf) -> Optional[float]:
    return None if value is None else _num(value, where, lo, hi)


def _opt_int(value, where: str, minimum: int = 1) -> Optional[int]:
    return None if value is None else _int(value, where, minimum)


def _str(value, where: str) -> str:
    if not isinstance(value, str):
        _fail(where, f"must be a string, got {value!r}")
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        _fail(where, f"must be a JSON array, got {type(value).__name__}")
    return value


def _grid(value, where: str) -> Tuple[int, int, int]:
    items = _list(value, where)
    if len(items) != 3:
        _fail(where, f"must be [T, H, W], got {value!r}")
    return tuple(_int(x, f"{where}[{i}]", 1) for i, x in enumerate(items))  # type: ignore[return-value]


def _even_tile(pattern: Pattern) -> bool:
    """A sliding tile with an even window entry (whose meaning changed in version 4)."""
    return isinstance(pattern, SlidingTile) and any(w % 2 == 0 for w in pattern.window)


def _block_far(pattern: Pattern) -> bool:
    """A block-sparse pattern with a far field (new in version 5)."""
    return isinstance(pattern, BlockSparse) and pattern.far is not None


def _candidate_is(candidate, test) -> bool:
    """Whether a ``profile.candidates`` entry holds a valid pattern for which ``test`` holds."""
    pattern = candidate.get("pattern") if isinstance(candidate, dict) else None
    if not isinstance(pattern, dict):
        return False
    try:
        return test(Pattern.from_dict(pattern))
    except (TypeError, ValueError):
        return False


def _even_candidate(candidate) -> bool:
    """A ``profile.candidates`` entry whose pattern is an even-window sliding tile."""
    return _candidate_is(candidate, _even_tile)


def _pattern(value, where: str, version: int = VERSION) -> Pattern:
    """The pattern of a plan of format ``version``: before version 4, an even-window sliding
    tile is the strided neighbourhood it ran as (module docstring)."""
    try:
        pattern = Pattern.from_dict(value)
    except (TypeError, ValueError) as exc:
        _fail(where, str(exc))
    if version < TILE_ALIGNED_VERSION and _even_tile(pattern):
        return pattern.as_neighborhood()
    return pattern


# --------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadChoice:
    """One head's pattern with the error and density measured for it."""

    pattern: Pattern
    error: float
    density: float

    def to_dict(self) -> dict:
        return {"pattern": self.pattern.to_dict(), "error": self.error, "density": self.density}


@dataclass(frozen=True)
class LayerPlan:
    """One self-attention layer: its name and one :class:`HeadChoice` per head."""

    name: str
    heads: Tuple[HeadChoice, ...]

    @property
    def patterns(self) -> Tuple[Pattern, ...]:
        return tuple(h.pattern for h in self.heads)

    @property
    def uniform(self) -> bool:
        return all(h.pattern == self.heads[0].pattern for h in self.heads)

    @property
    def error(self) -> float:
        return sum(h.error for h in self.heads) / len(self.heads)

    @property
    def density(self) -> float:
        return sum(h.density for h in self.heads) / len(self.heads)

    def to_dict(self) -> dict:
        out: Dict[str, Any] = {"name": self.name}
        if self.uniform:
            out["pattern"] = self.heads[0].pattern.to_dict()
        else:
            out["heads"] = [h.to_dict() for h in self.heads]
        out["error"] = self.error
        out["density"] = self.density
        return out


@dataclass(frozen=True)
class ModelInfo:
    """The model a plan was profiled on."""

    cls: str
    name_or_path: Optional[str]
    layers: Tuple[str, ...]
    heads: int
    head_dim: int

    def to_dict(self) -> dict:
        return {"class": self.cls, "name_or_path": self.name_or_path, "heads": self.heads,
                "head_dim": self.head_dim, "layers": list(self.layers)}


_PROFILE_REQUIRED = ("grid", "text_len", "num_inference_steps", "sampled_steps", "seeds", "num_prompts",
                     "prompts_sha256", "mode", "versions")
_PROFILE_OPTIONAL = ("height", "width", "num_frames", "max_error", "budget", "dense_bound", "candidates", "cost",
                     "phase_values")


class Plan:
    """Per layer (and head) sparse patterns for one model, with the dense warm-up steps.

    Build one with :func:`dit_sparse.profile` or :meth:`load`; apply it with
    ``dit_sparse.apply(pipe, plan)``.

    Attributes:
        model: :class:`ModelInfo`.
        profile: what it was profiled on (dict; see the module docstring).
        dense_steps: early steps that run dense.
        layers: ``{layer name: LayerPlan}`` in the model's order, run from the end of the
            warm-up until the first phase.
        phases: ``((start_step, {layer name: LayerPlan}), ...)``: later phases of the
            schedule, each from its start step until the next one's (module docstring).
    """

    def __init__(self, model: ModelInfo, profile: Dict[str, Any], dense_steps: int, layers: Sequence[LayerPlan],
                 phases: Sequence[Tuple[int, Sequence[LayerPlan]]] = ()):
        self.model = model
        self.profile = dict(profile)
        self.dense_steps = int(dense_steps)
        self.layers: Dict[str, LayerPlan] = {layer.name: layer for layer in layers}
        self.phases: Tuple[Tuple[int, Dict[str, LayerPlan]], ...] = tuple(
            (int(start), {layer.name: layer for layer in entries}) for start, entries in phases)
        self._warned_grids = set()
        self._warned_steps = set()
        self._check()

    # --- consistency -----------------------------------------------------------------
    def _check(self):
        self._check_layers(self.layers, "['layers']")
        starts = [start for start, _ in self.phases]
        if any(s < 1 for s in starts) or starts != sorted(set(starts)):
            _fail("['phases']", f"start steps must be strictly increasing ints >= 1, got {starts}")
        for i, (_, layers) in enumerate(self.phases):
            self._check_layers(layers, f"['phases'][{i}]['layers']")

    def _check_layers(self, layers: Dict[str, LayerPlan], where: str):
        if list(layers) != list(self.model.layers):
            missing = [n for n in self.model.layers if n not in layers]
            extra = [n for n in layers if n not in self.model.layers]
            if missing or extra:
                _fail(where, f"layer entries must match ['model']['layers']: missing {_short(missing)}, "
                             f"unexpected {_short(extra)}")
            _fail(where, "layer entries must be in the order of ['model']['layers']")
        for i, layer in enumerate(layers.values()):
            if len(layer.heads) != self.model.heads:
                _fail(f"{where}[{i}]", f"layer {layer.name!r} has {len(layer.heads)} head entries but the plan's "
                                       f"header says heads={self.model.heads} (['model']['heads'])")

    # --- the apply protocol ----------------------------------------------------------
    @property
    def grid(self) -> Tuple[int, int, int]:
        return tuple(self.profile["grid"])  # type: ignore[return-value]

    @property
    def all_full(self) -> bool:
        return all(isinstance(p, Full) for layers in self._tables() for layer in layers.values()
                   for p in layer.patterns)

    @property
    def phase_starts(self) -> Tuple[int, ...]:
        """Start steps of the phases after the first (empty for a plan without phases)."""
        return tuple(start for start, _ in self.phases)

    def _tables(self) -> List[Dict[str, LayerPlan]]:
        return [self.layers] + [layers for _, layers in self.phases]

    def schedule(self) -> List[Tuple[int, int, Dict[str, LayerPlan]]]:
        """``(first_step, end_step, layers)`` of every sparse phase at the profiled step count
        (the top-level layers from the end of the warm-up first)."""
        starts = [self.dense_steps] + list(self.phase_starts)
        ends = list(self.phase_starts) + [int(self.profile["num_inference_steps"])]
        return list(zip(starts, ends, self._tables()))

    def patterns_for(self, layer_name: str, num_heads: int, phase: int = 0):
        """Per-head patterns of ``layer_name`` in ``phase`` (0: the top-level layers, ``i``:
        ``phases[i - 1]``), or None for a layer that stays dense there."""
        tables = self._tables()
        if not 0 <= phase < len(tables):
            raise ValueError(f"phase={phase} must be in [0, {len(tables)}) for a plan with {len(self.phases)} phases")
        layer = tables[phase].get(layer_name)
        if layer is None:
            raise ValueError(f"the plan (for {self.model.cls}) has no layer {layer_name!r} of the model; the plan's "
                             f"layers: {_short(list(self.layers))}")
        if num_heads != len(layer.heads):
            raise ValueError(f"the plan's header says heads={len(layer.heads)} but the model's layer {layer_name!r} "
                             f"has {num_heads} heads")
        patterns = layer.patterns
        if all(isinstance(p, Full) for p in patterns) and not self.all_full:
            return None  # dense: leave the model's own attention in place
        return list(patterns)

    def check_used(self, names: Sequence[str]) -> None:
        """The layers ``apply`` found must be exactly the plan's layers."""
        missing = [n for n in self.layers if n not in names]
        extra = [n for n in names if n not in self.layers]
        if missing or extra:
            raise ValueError(f"plan does not fit the model's self-attention layers: plan layers missing from the "
                             f"model {_short(missing)}, model layers missing from the plan {_short(extra)}")

    def check_grid(self, grid) -> None:
        """Warn (once per grid) when a forward runs at a grid other than the profiled one."""
        grid = tuple(int(g) for g in grid)
        if grid != self.grid and grid not in self._warned_grids:
            self._warned_grids.add(grid)
            warnings.warn(f"plan profiled on token grid {self.grid} is applied at grid {grid}: windows are kept in "
                          "tokens (clamped where an axis is smaller), errors may differ from the profiled ones",
                          PlanGridWarning, stacklevel=2)

    def check_steps(self, num_steps: int) -> None:
        """Warn (once per step count) when a plan with phases runs a schedule of another
        length than the profiled one: phase starts are absolute steps, so they no longer
        split the schedule where they did (:meth:`rescaled` moves them)."""
        profiled = int(self.profile["num_inference_steps"])
        if self.phases and num_steps != profiled and num_steps not in self._warned_steps:
            self._warned_steps.add(num_steps)
            warnings.warn(f"plan with phases from steps {list(self.phase_starts)} was profiled for {profiled} steps "
                          f"and runs {num_steps}: its steps are absolute; plan.rescaled({num_steps}) moves the "
                          "warm-up and phase starts in proportion", PlanStepsWarning, stacklevel=2)

    def rescaled(self, num_steps: int) -> "Plan":
        """This plan for a schedule of ``num_steps``: the dense warm-up and the phase starts
        moved in proportion (rounded; starts kept strictly increasing), the profile's record
        unchanged."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps={num_steps!r} must be an int >= 1")
        ratio = num_steps / int(self.profile["num_inference_steps"])
        starts: List[int] = []
        for start in self.phase_starts:
            starts.append(max(round(start * ratio), starts[-1] + 1 if starts else 1))
        plan = Plan(self.model, self.profile, round(self.dense_steps * ratio), list(self.layers.values()),
                    [(s, list(layers.values())) for s, (_, layers) in zip(starts, self.phases)])
        plan._warned_steps.add(num_steps)
        return plan

    def validate_for(self, model) -> None:
        """Check that the plan fits a model described by ``model``, a dict ``{"class",
        "layers", "heads", "head_dim"}`` (``dit_sparse.pipelines.api.describe_model`` of a
        pipeline or transformer; :func:`dit_sparse.apply` passes it). Raises ValueError
        naming what differs."""
        if not isinstance(model, dict):
            raise TypeError(f"model={type(model).__name__} must be a description dict; pass "
                            "dit_sparse.pipelines.api.describe_model(pipe) for a pipeline or transformer")
        desc = model
        diffs = []
        if desc["class"] != self.model.cls:
            diffs.append(f"the plan's header says class={self.model.cls!r} but the model's class is "
                         f"{desc['class']!r}")
        layers = list(desc["layers"])
        if layers != list(self.model.layers):
            missing = [n for n in self.model.layers if n not in layers]
            extra = [n for n in layers if n not in self.model.layers]
            which = []
            if missing:
                which.append(f"only in the plan: {_short(missing)}")
            if extra:
                which.append(f"only in the model: {_short(extra)}")
            diffs.append(f"the plan's header lists {len(self.model.layers)} self-attention layers but the model has "
                         f"{len(layers)} ({'; '.join(which) or 'the same names in another order'})")
        if desc["heads"] != self.model.heads:
            diffs.append(f"the plan's header says heads={self.model.heads} but the model's layers have "
                         f"{desc['heads']} heads")
        if desc.get("head_dim") is not None and desc["head_dim"] != self.model.head_dim:
            diffs.append(f"the plan's header says head_dim={self.model.head_dim} but the model's layers have "
                         f"head_dim {desc['head_dim']}")
        if diffs:
            raise ValueError("plan does not fit this model: " + "; ".join(diffs))

    # --- numbers ---------------------------------------------------------------------
    def phase_steps(self, num_steps: Optional[int] = None) -> List[int]:
        """How many of ``num_steps`` (default: the profiled count) steps each phase runs
        (the top-level layers first), after the dense warm-up."""
        n = int(self.profile["num_inference_steps"]) if num_steps is None else int(num_steps)
        bounds = [self.dense_steps] + [max(s, self.dense_steps) for s in self.phase_starts] + [max(n, self.dense_steps)]
        return [max(0, min(b, n) - min(a, n)) for a, b in zip(bounds, bounds[1:])]

    def _mean(self, what: str) -> float:
        counts = self.phase_steps()
        if sum(counts) == 0:
            counts = [1] + [0] * len(self.phases)
        total = 0.0
        for count, layers in zip(counts, self._tables()):
            heads = [h for layer in layers.values() for h in layer.heads]
            total += count * sum(getattr(h, what) for h in heads) / len(heads)
        return total / sum(counts)

    @property
    def mean_density(self) -> float:
        """Mean density over all layers and heads on the sparse steps (phases weighted by
        their number of steps at the profiled step count)."""
        return self._mean("density")

    @property
    def mean_error(self) -> float:
        return self._mean("error")

    def density_matrix(self, phase: int = 0) -> List[List[float]]:
        """``[layers][heads]`` chosen densities of one sparse phase (for pictures)."""
        return [[h.density for h in layer.heads] for layer in self._tables()[phase].values()]

    # --- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {"format": FORMAT, "version": self.version, "model": self.model.to_dict(),
               "profile": self.profile, "dense_steps": self.dense_steps,
               "layers": [layer.to_dict() for layer in self.layers.values()]}
        if self.phases:
            out["phases"] = [{"start_step": start, "layers": [layer.to_dict() for layer in layers.values()]}
                             for start, layers in self.phases]
        return out

    def _patterns(self) -> List[Pattern]:
        """Every pattern of the layers and phases."""
        return [p for layers in self._tables() for layer in layers.values() for p in layer.patterns]

    @property
    def version(self) -> int:
        """The oldest format version that holds this plan: 5 with a block-sparse far field, 4
        with an even-window sliding tile (in the layers, phases or ``profile.candidates``), 3
        with far fields, 2 with phases, else 1."""
        candidates = self.profile.get("candidates", [])
        if any(_block_far(p) for p in self._patterns()) or any(_candidate_is(c, _block_far) for c in candidates):
            return BLOCK_FAR_VERSION
        if any(_even_tile(p) for p in self._patterns()) or any(
                _even_candidate(c) for c in self.profile.get("candidates", [])):
            return TILE_ALIGNED_VERSION
        far = any(p.far is not None for p in self._patterns())
        return 3 if far else 2 if self.phases else 1

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data) -> "Plan":
        """Validate every field of a plan document; errors name the field's JSON path."""
        data = _dict(data, "", ("format", "version", "model", "profile", "dense_steps", "layers"), ("phases",))
        if data["format"] != FORMAT:
            _fail("['format']", f"is {data['format']!r}, expected {FORMAT!r} (not a dit-sparse plan)")
        if isinstance(data["version"], bool) or data["version"] not in range(1, VERSION + 1):
            _fail("['version']", f"is {data['version']!r}, this dit-sparse reads versions 1 to {VERSION}")
        version = data["version"]
        if "phases" in data and data["version"] < 2:
            _fail("['phases']", "needs ['version'] 2 (version 1 plans have no phases)")
        m = _dict(data["model"], "['model']", ("class", "name_or_path", "heads", "head_dim", "layers"))
        layer_names = tuple(_str(n, f"['model']['layers'][{i}]") for i, n in enumerate(_list(m["layers"],
                                                                                             "['model']['layers']")))
        if not layer_names:
            _fail("['model']['layers']", "is empty")
        if len(set(layer_names)) != len(layer_names):
            _fail("['model']['layers']", "has duplicate names")
        if m["name_or_path"] is not None:
            _str(m["name_or_path"], "['model']['name_or_path']")
        model = ModelInfo(_str(m["class"], "['model']['class']"), m["name_or_path"], layer_names,
                          _int(m["heads"], "['model']['heads']", 1), _int(m["head_dim"], "['model']['head_dim']", 1))
        profile = cls._check_profile(data["profile"], version)
        dense_steps = _int(data["dense_steps"], "['dense_steps']", 0)
        layers = _layer_entries(data["layers"], "['layers']", model, version)
        phases = []
        for i, phase in enumerate(_list(data.get("phases", []), "['phases']")):
            where = f"['phases'][{i}]"
            phase = _dict(phase, where, ("start_step", "layers"))
            phases.append((_int(phase["start_step"], f"{where}['start_step']", 1),
                           _layer_entries(phase["layers"], f"{where}['layers']", model, version)))
        plan = cls(model, profile, dense_steps, layers, phases)
        if version < 3 and any(p.far is not None for p in plan._patterns()):
            _fail("['layers']", f"hold far fields, which need ['version'] 3 (the plan says {data['version']})")
        if version < BLOCK_FAR_VERSION and (any(_block_far(p) for p in plan._patterns()) or any(
                _candidate_is(c, _block_far) for c in plan.profile.get("candidates", []))):
            _fail("['layers']", f"hold block-sparse far fields, which need ['version'] {BLOCK_FAR_VERSION} "
                                f"(the plan says {data['version']})")
        return plan

    @staticmethod
    def _check_profile(value, version: int = VERSION) -> dict:
        """The validated profile (a copy when candidates of an older version are rewritten)."""
        p = _dict(value, "['profile']", _PROFILE_REQUIRED, _PROFILE_OPTIONAL)
        w = "['profile']"
        _grid(p["grid"], f"{w}['grid']")
        _int(p["text_len"], f"{w}['text_len']", 0)
        steps = _int(p["num_inference_steps"], f"{w}['num_inference_steps']", 1)
        sampled = [_int(s, f"{w}['sampled_steps'][{i}]", 0) for i, s in enumerate(_list(p["sampled_steps"],
                                                                                        f"{w}['sampled_steps']"))]
        if not sampled or sampled != sorted(set(sampled)) or sampled[-1] >= steps:
            _fail(f"{w}['sampled_steps']", f"must be increasing steps in [0, {steps}), got {sampled}")
        for i, s in enumerate(_list(p["seeds"], f"{w}['seeds']")):
            _int(s, f"{w}['seeds'][{i}]", 0)
        _int(p["num_prompts"], f"{w}['num_prompts']", 1)
        digest = _str(p["prompts_sha256"], f"{w}['prompts_sha256']")
        if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
            _fail(f"{w}['prompts_sha256']", f"must be 64 lowercase hex digits, got {digest!r}")
        if p["mode"] not in ("max_error", "budget"):
            _fail(f"{w}['mode']", f"must be 'max_error' or 'budget', got {p['mode']!r}")
        _opt_num(p.get("max_error"), f"{w}['max_error']")
        _opt_num(p.get("budget"), f"{w}['budget']", 0.0, 1.0)
        _opt_num(p.get("dense_bound"), f"{w}['dense_bound']")
        if p.get("cost", "density") not in ("density", "time"):
            _fail(f"{w}['cost']", f"must be 'density' or 'time', got {p['cost']!r}")
        if p.get(p["mode"]) is None:
            _fail(f"{w}['{p['mode']}']", f"must be set when mode is {p['mode']!r}")
        for i, v in enumerate(_list(p.get("phase_values", []), f"{w}['phase_values']")):
            _num(v, f"{w}['phase_values'][{i}]")
        for key in ("height", "width", "num_frames"):
            _opt_int(p.get(key), f"{w}['{key}']")
        versions = _dict(p["versions"], f"{w}['versions']", ("dit_sparse",), ("torch", "diffusers", "transformers"))
        for key, v in versions.items():
            _str(v, f"{w}['versions']['{key}']")
        candidates = []
        for i, c in enumerate(_list(p.get("candidates", []), f"{w}['candidates']")):
            cw = f"{w}['candidates'][{i}]"
            c = _dict(c, cw, ("pattern", "error", "density"), ("time",))
            pattern = _pattern(c["pattern"], f"{cw}['pattern']", version)
            _num(c["error"], f"{cw}['error']")
            _num(c["density"], f"{cw}['density']", 0.0, 1.0)
            _opt_num(c.get("time"), f"{cw}['time']")
            if pattern.kind != c["pattern"]["kind"]:  # an older even-window sliding tile, as it ran
                c = dict(c, pattern=pattern.to_dict())
            candidates.append(c)
        if "candidates" in p and candidates != p["candidates"]:
            p = dict(p, candidates=candidates)
        return p

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the plan as JSON atomically (``dit_sparse.atomic``: temporary file in the same
        folder, flushed, then ``os.replace``): an existing file is either kept or fully replaced."""
        return write_text(path, self.to_json(), what="Plan.save: path")

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Plan":
        """Read and validate a plan file. Raises ValueError naming what is wrong, OSError
        (with the path, one line) when it cannot be read: missing, a folder, no permission."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"plan file {str(path)!r} does not exist") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not a text file ({exc.reason})") from None
        except OSError as exc:  # a folder is IsADirectoryError on POSIX, PermissionError on Windows
            if path.is_dir():
                raise IsADirectoryError(f"plan path {str(path)!r} is a folder, not a plan file (give the "
                                        "path of a plan's .json file)") from None
            raise type(exc)(f"plan file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    # --- display ---------------------------------------------------------------------
    def summary(self) -> str:
        """A table: layer, pattern per head (runs of equal heads), density, error."""
        p = self.profile
        mode = f"max_error={p['max_error']}" if p["mode"] == "max_error" else f"budget={p['budget']}"
        if p.get("cost", "density") != "density":
            mode += f", cost={p['cost']}"
        if self.phases:
            values = p.get("phase_values")
            mode += ", phases from steps " + ", ".join(
                str(start) + (f" ({p['mode']}={values[i]})" if values and i < len(values) else "")
                for i, start in enumerate(self.phase_starts))
        lines = [
            f"dit-sparse plan for {self.model.cls} ({self.model.name_or_path or 'unnamed'}): "
            f"{len(self.layers)} layers x {self.model.heads} heads, head_dim {self.model.head_dim}",
            f"profiled on grid {tuple(p['grid'])}, {p['num_inference_steps']} steps (sampled {len(p['sampled_steps'])}), "
            f"{p['num_prompts']} prompt(s) x {len(p['seeds'])} seed(s), {mode}",
            f"dense warm-up steps: {self.dense_steps}; mean density {self.mean_density:.3f}, "
            f"mean error {self.mean_error:.4f}",
            "",
        ]
        rows = [("steps", "layer", "heads", "pattern", "density", "error") if self.phases else
                ("layer", "heads", "pattern", "density", "error")]
        for a, b, layers in self.schedule():
            first = True
            for layer in layers.values():
                for g, (h0, h1, pattern, dens, err) in enumerate(_runs(layer.heads)):
                    heads = str(h0) if h1 == h0 + 1 else f"{h0}-{h1 - 1}"
                    row = (layer.name if g == 0 else "", heads, pattern_spec(pattern), f"{dens:.3f}", f"{err:.4f}")
                    rows.append(((f"{a}-{b - 1}" if first else "",) + row) if self.phases else row)
                    first = False
        lines.append(format_table(rows, left=4 if self.phases else 3))
        return "\n".join(lines)

    def __repr__(self):
        phases = f", phase_starts={list(self.phase_starts)}" if self.phases else ""
        return (f"Plan({self.model.cls}, {len(self.layers)} layers, dense_steps={self.dense_steps}{phases}, "
                f"mean_density={self.mean_density:.3f})")


def _layer_entries(value, where_list: str, model: ModelInfo, version: int = VERSION) -> List[LayerPlan]:
    """The layer entries of ``['layers']`` or of a phase, validated."""
    layers = []
    for i, entry in enumerate(_list(value, where_list)):
        where = f"{where_list}[{i}]"
        entry = _dict(entry, where, ("name", "error", "density"), ("pattern", "heads"))
        name = _str(entry["name"], f"{where}['name']")
        _num(entry["error"], f"{where}['error']")
        _num(entry["density"], f"{where}['density']", 0.0, 1.0)
        if ("pattern" in entry) == ("heads" in entry):
            _fail(where, "needs exactly one of 'pattern' (all heads) and 'heads' (one entry per head)")
        if "pattern" in entry:
            choice = HeadChoice(_pattern(entry["pattern"], f"{where}['pattern']", version), float(entry["error"]),
                                float(entry["density"]))
            heads = (choice,) * model.heads
        else:
            heads = []
            for j, h in enumerate(_list(entry["heads"], f"{where}['heads']")):
                hw = f"{where}['heads'][{j}]"
                h = _dict(h, hw, ("pattern", "error", "density"))
                heads.append(HeadChoice(_pattern(h["pattern"], f"{hw}['pattern']", version),
                                        _num(h["error"], f"{hw}['error']"),
                                        _num(h["density"], f"{hw}['density']", 0.0, 1.0)))
            heads = tuple(heads)
        layers.append(LayerPlan(name, heads))
    return layers


def _runs(heads: Sequence[HeadChoice]):
    """``(first, end, pattern, mean density, mean error)`` over runs of equal patterns."""
    out = []
    for i, h in enumerate(heads):
        if out and out[-1][2] == h.pattern:
            first, _, pattern, items = out[-1]
            out[-1] = (first, i + 1, pattern, items + [h])
        else:
            out.append((i, i + 1, h.pattern, [h]))
    return [(a, b, p, sum(x.density for x in xs) / len(xs), sum(x.error for x in xs) / len(xs))
            for a, b, p, xs in out]


def _short(names: Sequence[str], n: int = 4) -> str:
    names = list(names)
    return "[" + ", ".join(names[:n]) + (", ..." if len(names) > n else "") + f"] ({len(names)})"


__all__ = ["Plan", "LayerPlan", "HeadChoice", "ModelInfo", "PlanGridWarning", "PlanStepsWarning", "pattern_spec", "prompts_digest",
           "FORMAT", "VERSION"]
