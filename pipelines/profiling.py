"""``dit_sparse.profile``: run a pipeline densely on calibration prompts and build a Plan.

How it works: :func:`dit_sparse.apply` is given a plan that marks every self-attention layer
``Full`` (which tags every layer's calls), and an observer (:func:`dit_sparse.observe`) hands
each call to :class:`_Recorder`. The model's own processors project q, k, v (norms, RoPE);
the recorder computes the dense output
(that is what the pipeline continues with, so the run is exactly a dense run) and, at the
sampled steps, every candidate pattern's output from the same q, k, v with
:func:`dit_sparse.selection.candidate_errors`. Only per-head sums are kept: nothing of one
call's q, k, v outlives the call. The error table then goes through the pure selection of
:mod:`dit_sparse.selection` and becomes a :class:`dit_sparse.Plan`.

Limits: one process (no context parallelism while profiling); the pipeline is called once
per (prompt, seed), with ``output_type="latent"`` unless ``call_kwargs`` says otherwise.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

import dit_sparse
from dit_sparse.ops import sparse_attention
from dit_sparse.patterns import Full, Pattern, parse_pattern
from dit_sparse.plan import HeadChoice, LayerPlan, ModelInfo, Plan, prompts_digest
from dit_sparse.selection import (ErrorTable, candidate_errors, check_cost, check_mode, check_phases, default_candidates,
                                  select)

from .api import describe_model


# --------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------


class _AllFull:
    """The plan ``apply`` runs while profiling: every self-attention layer tagged, still dense."""

    dense_steps = 0

    def patterns_for(self, layer_name, num_heads):
        return Full()


class _Recorder:
    """The attention function of a profiling run: dense output, candidate errors on sampled steps."""

    def __init__(self, layers: Sequence[str], heads: int, candidates: Sequence[Pattern], sample_steps: Iterable[int],
                 on_step=None):
        self.index = {name: i for i, name in enumerate(layers)}
        self.heads = heads
        self.candidates = list(candidates)
        self.sample_steps = set(sample_steps)
        self.on_step = on_step
        n_layers, n_cand = len(layers), len(self.candidates)
        self.err_sq: Dict[int, torch.Tensor] = {}
        self.norm_sq: Dict[int, torch.Tensor] = {}
        self.dens_sum = torch.zeros(n_layers, heads, n_cand, dtype=torch.float64)
        self.dens_calls = torch.zeros(n_layers, dtype=torch.float64)
        self.grid: Optional[Tuple[int, int, int]] = None
        self.text_len: Optional[int] = None
        self.steps_seen = set()
        self.run = 0
        self._last = None

    def observe(self, call, proceed):
        """The observer of a profiling run (:func:`dit_sparse.observe`): every self-attention
        call of a layer under ``_AllFull`` goes through :meth:`__call__`."""
        if call.layer is None or not call.sparse:  # pragma: no cover - _AllFull with no dense steps claims all
            return proceed()
        self.call = call
        return call.run(self)

    def __call__(self, q, k, v, pattern, layout, *, key_mask=None, scale=None, backend=None):
        layer_name, step = self.call.layer, self.call.step
        dense = sparse_attention(q, k, v, Full(), layout, key_mask=key_mask, scale=scale, backend=backend)
        if (self.run, step) != self._last:
            self._last = (self.run, step)
            self.steps_seen.add(step)
            if self.on_step is not None:
                self.on_step(step)
        if step not in self.sample_steps:
            return dense
        if self.grid is None:
            self.grid, self.text_len = layout.grid, layout.text_len
            self.layout, self.head_dim, self.device, self.dtype = layout, q.shape[-1], q.device, q.dtype
        elif layout.grid != self.grid:
            raise ValueError(f"token grid changed during profiling: {layout.grid} after {self.grid}; profile one "
                             "resolution at a time")
        if q.shape[2] != self.heads:
            raise RuntimeError(f"layer {layer_name!r}: got {q.shape[2]} heads, expected {self.heads} (profiling does "
                               "not support context parallelism)")
        i = self.index[layer_name]
        _, diff_sq, dense_sq, density = candidate_errors(q, k, v, self.candidates, layout, key_mask=key_mask,
                                                         scale=scale, dense=dense)
        if step not in self.err_sq:
            l, h, c = len(self.index), self.heads, len(self.candidates)
            self.err_sq[step] = torch.zeros(l, h, c, dtype=torch.float64)
            self.norm_sq[step] = torch.zeros(l, h, dtype=torch.float64)
        self.err_sq[step][i] += diff_sq
        self.norm_sq[step][i] += dense_sq
        self.dens_sum[i] += density
        self.dens_calls[i] += 1
        return dense

    def table(self, layers: Sequence[str]) -> ErrorTable:
        steps = sorted(self.err_sq)
        if not steps:
            raise RuntimeError(f"no self-attention call ran at the sampled steps {sorted(self.sample_steps)} "
                               f"(steps seen: {sorted(self.steps_seen)})")
        missing = [n for n, i in self.index.items() if self.dens_calls[i] == 0]
        if missing:
            raise RuntimeError(f"self-attention layers {missing} never ran during profiling")
        err = torch.stack([self.err_sq[s] for s in steps])
        norm = torch.stack([self.norm_sq[s] for s in steps])
        errors = torch.where(norm[..., None] > 0, (err / norm[..., None].clamp_min(1e-300)).sqrt(),
                             torch.zeros_like(err))
        density = (self.dens_sum / self.dens_calls[:, None, None]).clamp(0.0, 1.0)
        return ErrorTable(tuple(layers), self.heads, tuple(self.candidates), tuple(steps), errors, density, norm)


def time_candidates(candidates: Sequence[Pattern], layout, heads: int, head_dim: int, *, device="cpu",
                    dtype=torch.float32, reps: int = 3, seed: int = 0) -> torch.Tensor:
    """``[C]`` kernel time of each candidate relative to dense attention, on one random
    ``[1, S, heads, head_dim]`` q, k, v of the profiled layout, device and dtype (best of
    ``reps`` calls after a warm-up; ``Full`` is 1 by definition).

    Density is only a proxy for cost: each kernel reaches its own share of 1 / density, so
    :func:`dit_sparse.selection.select` can rank candidates by these times (``cost="time"``).
    """
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, layout.seq_len, heads, head_dim, generator=g).to(device=device, dtype=dtype)
               for _ in range(3))
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def best(pattern) -> float:
        with torch.no_grad():
            sparse_attention(q, k, v, pattern, layout)
            sync()
            times = []
            for _ in range(max(1, int(reps))):
                start = time.perf_counter()
                sparse_attention(q, k, v, pattern, layout)
                sync()
                times.append(time.perf_counter() - start)
        return min(times)

    dense = best(Full())
    return torch.tensor([1.0 if isinstance(p, Full) else best(p) / dense for p in candidates], dtype=torch.float64)


# --------------------------------------------------------------------------------------
# profile()
# --------------------------------------------------------------------------------------


def default_sample_steps(num_steps: int) -> List[int]:
    """Every step up to 12 steps; otherwise the first 4 and 8 spread evenly over the rest."""
    if num_steps <= 12:
        return list(range(num_steps))
    rest = [4 + round(i * (num_steps - 5) / 7) for i in range(8)]
    return sorted(set(range(4)) | set(rest))


def _check_prompts(prompts) -> List[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    try:
        prompts = list(prompts)
    except TypeError:
        raise TypeError(f"prompts={prompts!r} must be a list of strings") from None
    if not prompts:
        raise ValueError("prompts is empty: profiling needs at least one calibration prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}]={p!r} must be a string")
        if not p.strip():
            raise ValueError(f"prompts[{i}] is empty")
    return prompts


def _check_candidates(candidates, grid) -> List[Pattern]:
    if candidates is None:
        return default_candidates(grid)
    if isinstance(candidates, (str, dict, Pattern)):
        candidates = [candidates]
    out: List[Pattern] = []
    for i, c in enumerate(candidates):
        try:
            p = parse_pattern(c)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"candidates[{i}]: {exc}") from None
        if p not in out:
            out.append(p)
    if not out:
        raise ValueError("candidates is empty")
    if not any(isinstance(p, Full) for p in out):
        out.append(Full())  # the fallback every layer can take
    return out


def _versions() -> Dict[str, str]:
    import diffusers

    out = {"dit_sparse": dit_sparse.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def _call_parameters(pipe) -> Dict[str, inspect.Parameter]:
    return dict(inspect.signature(type(pipe).__call__).parameters)


class Measurement:
    """What a profiling run measured: the error table and what it ran on. :meth:`plan`
    selects patterns from it (any number of times, at any budget or error bound)."""

    def __init__(self, table: ErrorTable, desc: Dict[str, Any], context: Dict[str, Any]):
        self.table = table
        self.desc = desc
        self.context = context

    def plan(self, *, max_error: Optional[float] = None, budget: Optional[float] = None,
             dense_bound: Optional[float] = None, max_dense_fraction: float = 0.5, per_head: bool = True,
             cost: str = "density", phases: Optional[Sequence[Tuple[int, float]]] = None) -> Plan:
        """A plan selected from this measurement (arguments as :func:`profile`)."""
        sel = select(self.table, max_error=max_error, budget=budget, num_steps=self.context["num_inference_steps"],
                     dense_bound=dense_bound, max_dense_fraction=max_dense_fraction, per_head=per_head, cost=cost,
                     phases=phases)
        return build_plan(self.table, sel, self.desc, cost=cost, **self.context)


def profile(pipe, prompts, *, candidates=None, max_error: Optional[float] = None, budget: Optional[float] = None,
            num_inference_steps: Optional[int] = None, sample_steps: Optional[Sequence[int]] = None,
            seeds: Sequence[int] = (0,), height: Optional[int] = None, width: Optional[int] = None,
            num_frames: Optional[int] = None, progress: bool = True, dense_bound: Optional[float] = None,
            max_dense_fraction: float = 0.5, model_name: Optional[str] = None,
            call_kwargs: Optional[Dict[str, Any]] = None, per_head: bool = True, cost: str = "density",
            phases: Optional[Sequence[Tuple[int, float]]] = None) -> Plan:
    """Profile ``pipe`` with dense attention on calibration prompts and choose a plan.

    Args:
        pipe: a diffusers pipeline of a supported family.
        prompts: calibration prompts (a list of strings; only their sha256 is stored).
        candidates: patterns (objects, dicts or spec strings) to choose from; default
            :func:`dit_sparse.selection.default_candidates` of the profiled grid. ``Full`` is
            added when missing.
        max_error: per layer and head, the cheapest candidate with relative L2 error <= it.
        budget: mean density (0, 1] over layers and heads; minimise the summed error.
            Exactly one of ``max_error`` and ``budget``.
        num_inference_steps: denoising steps (default: the pipeline's default).
        sample_steps: steps at which candidates are measured (default
            :func:`default_sample_steps`).
        seeds: one pipeline call per (prompt, seed).
        height, width, num_frames: generation size (default: the pipeline's).
        progress: show a tqdm bar over (prompt, seed, step).
        dense_bound, max_dense_fraction: dense warm-up rule (:func:`dit_sparse.selection.select`).
        model_name: stored as the plan's ``name_or_path`` (default: the pipeline's).
        call_kwargs: further pipeline arguments (guidance_scale, negative_prompt, ...).
        per_head: choose per layer and head (default); False: one pattern per layer, on the
            heads' RMS error (faster on CPU, where a mixed layer costs one call per run of heads).
        cost: ``"density"`` (default) ranks candidates by density; ``"time"`` times every
            candidate's kernel on the profiled shape and device (:func:`time_candidates`) and
            ranks by that, ``budget`` then being a mean kernel time relative to dense.
        phases: ``[(start_step, value), ...]``: later phases of the schedule, from those
            steps on, each chosen on its own sampled steps under its own ``value`` (a
            ``max_error`` or ``budget``, as the plan's mode), e.g. ``max_error=0.1,
            phases=[(10, 0.25)]`` (:func:`dit_sparse.selection.select`).
    Returns:
        a :class:`dit_sparse.Plan`.
    """
    mode, _ = check_mode(max_error, budget)
    check_phases(phases, mode)
    check_cost(cost)
    measured = measure(pipe, prompts, candidates=candidates, num_inference_steps=num_inference_steps,
                       sample_steps=sample_steps, seeds=seeds, height=height, width=width, num_frames=num_frames,
                       progress=progress, model_name=model_name, call_kwargs=call_kwargs,
                       time_kernels=cost == "time")
    return measured.plan(max_error=max_error, budget=budget, dense_bound=dense_bound,
                         max_dense_fraction=max_dense_fraction, per_head=per_head, cost=cost, phases=phases)


def measure(pipe, prompts, *, candidates=None, num_inference_steps: Optional[int] = None,
            sample_steps: Optional[Sequence[int]] = None, seeds: Sequence[int] = (0,), height: Optional[int] = None,
            width: Optional[int] = None, num_frames: Optional[int] = None, progress: bool = True,
            model_name: Optional[str] = None, call_kwargs: Optional[Dict[str, Any]] = None,
            time_kernels: bool = False) -> Measurement:
    """The measuring half of :func:`profile` (same arguments): a :class:`Measurement`.
    ``time_kernels`` also times every candidate (:func:`time_candidates`; needed for
    ``Measurement.plan(cost="time")``)."""
    from .api import apply, observe

    prompts = _check_prompts(prompts)
    seeds = [int(s) for s in ([seeds] if isinstance(seeds, int) else seeds)]
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"seeds={seeds!r} must be a non-empty list of ints >= 0")
    desc = describe_model(pipe)
    if not desc["layers"]:
        raise ValueError(f"{desc['class']} has no self-attention layers that dit_sparse can sparsify")
    params = _call_parameters(pipe)
    if num_inference_steps is None:
        default = params.get("num_inference_steps")
        num_inference_steps = default.default if default is not None else None
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps!r} must be an int >= 1")
    steps = default_sample_steps(num_inference_steps) if sample_steps is None else sorted(set(int(s) for s in
                                                                                              sample_steps))
    if not steps or steps[0] < 0 or steps[-1] >= num_inference_steps:
        raise ValueError(f"sample_steps={sample_steps!r} must be steps in [0, {num_inference_steps})")
    if candidates is not None:
        _check_candidates(candidates, (1, 1, 1))  # fail fast on bad specs, before running anything

    kwargs: Dict[str, Any] = {"num_inference_steps": num_inference_steps, "output_type": "latent"}
    for key, val in (("height", height), ("width", width), ("num_frames", num_frames)):
        if val is not None:
            if key not in params:
                raise ValueError(f"{type(pipe).__name__} does not take {key}={val!r}")
            kwargs[key] = val
    kwargs.update(call_kwargs or {})

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts) * len(seeds) * num_inference_steps, desc="profiling", unit="step")

    # The candidates depend on the grid, known at the first self-attention call: the recorder
    # is built lazily through this holder.
    holder: Dict[str, Any] = {}

    def observer(call, proceed):
        rec = holder.get("recorder")
        if rec is None:
            cands = _check_candidates(candidates, call.layout.grid)
            rec = holder["recorder"] = _Recorder(desc["layers"], desc["heads"], cands, steps,
                                                 on_step=(lambda s: bar.update(1)) if bar is not None else None)
            rec.run = holder.get("run", 0)
        return rec.observe(call, proceed)

    saved_bar = getattr(pipe, "_progress_bar_config", None)
    saved_bar = dict(saved_bar) if saved_bar is not None else None
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    handle = apply(pipe, _AllFull(), dense_steps=0)
    watch = observe(pipe, observer)
    try:
        run = 0
        for prompt in prompts:
            for seed in seeds:
                holder["run"] = run
                if "recorder" in holder:
                    holder["recorder"].run = run
                handle.steps.reset()
                generator = torch.Generator(device="cpu").manual_seed(seed)
                with torch.no_grad():
                    pipe(prompt=prompt, generator=generator, **kwargs)
                run += 1
    finally:
        watch.remove()
        handle.remove()
        if saved_bar is not None:
            pipe._progress_bar_config = saved_bar
        elif hasattr(pipe, "_progress_bar_config"):
            del pipe._progress_bar_config
        if bar is not None:
            bar.close()

    recorder: _Recorder = holder.get("recorder")
    if recorder is None:
        raise RuntimeError("the pipeline ran no self-attention layer while profiling")
    table = recorder.table(desc["layers"])
    if time_kernels:
        table.time = time_candidates(table.candidates, recorder.layout, desc["heads"], recorder.head_dim,
                                     device=recorder.device, dtype=recorder.dtype)
    context = dict(prompts=prompts, seeds=seeds, num_inference_steps=num_inference_steps, height=height, width=width,
                   num_frames=num_frames, text_len=recorder.text_len or 0, grid=recorder.grid, model_name=model_name)
    return Measurement(table, desc, context)


def build_plan(table: ErrorTable, sel, desc: Dict[str, Any], *, prompts: Sequence[str], seeds: Sequence[int],
               num_inference_steps: int, grid, text_len: int = 0, height=None, width=None, num_frames=None,
               model_name: Optional[str] = None, cost: str = "density") -> Plan:
    """A :class:`Plan` from an error table, a :class:`~dit_sparse.selection.Selection` and a model description."""
    def layers(choice, errors, density):
        return [LayerPlan(name, tuple(HeadChoice(table.candidates[int(choice[i, j])], _clean(errors[i, j]),
                                                 _clean(density[i, j])) for j in range(table.heads)))
                for i, name in enumerate(table.layers)]

    phases = [(ph.start, layers(ph.choice, ph.errors, ph.density)) for ph in sel.phases]
    combined = table.combined(sel.dense_steps)
    cand_summary = [{"pattern": p.to_dict(), "error": _clean(combined[..., c].mean()),
                     "density": _clean(table.density[..., c].mean())} for c, p in enumerate(table.candidates)]
    if table.time is not None:
        for c, entry in enumerate(cand_summary):
            entry["time"] = _clean(table.time[c])
    profile_info = {
        "grid": list(grid), "text_len": int(text_len), "num_inference_steps": int(num_inference_steps),
        "sampled_steps": list(table.steps), "height": height, "width": width, "num_frames": num_frames,
        "seeds": [int(s) for s in seeds], "num_prompts": len(prompts), "prompts_sha256": prompts_digest(prompts),
        "mode": sel.mode, "max_error": sel.value if sel.mode == "max_error" else None,
        "budget": sel.value if sel.mode == "budget" else None, "dense_bound": _clean(sel.dense_bound), "cost": cost,
        "versions": _versions(), "candidates": cand_summary,
    }
    if phases:
        profile_info["phase_values"] = [ph.value for ph in sel.phases]
    model = ModelInfo(desc["class"], model_name if model_name is not None else desc.get("name_or_path"),
                      tuple(desc["layers"]), int(desc["heads"]), int(desc["head_dim"] or 0) or 1)
    return Plan(model, profile_info, sel.dense_steps, layers(sel.choice, sel.errors, sel.density), phases)


def _clean(x) -> float:
    """A JSON-safe float (rounded to 6 significant digits; no NaN)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"non-finite measurement {x}")
    return float(f"{x:.6g}")


__all__ = ["profile", "measure", "Measurement", "describe_model", "build_plan", "default_sample_steps"]
