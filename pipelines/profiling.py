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

Over several processes (``torchrun``: gloo on CPU, nccl on GPUs), every rank calls
``profile`` with the same arguments (checked before anything runs). Without context
parallelism the (prompt, seed) runs are dealt round-robin: rank ``r`` runs ``r, r + world, ...``.
Under diffusers' Ulysses context parallelism every rank runs every run, and after Ulysses'
all-to-all holds every token for its slice of the heads: it measures those heads, at their
global indices. The recorder keeps its sums per run and per head, zero where this rank
measured nothing, and one float64 ``all_reduce`` (SUM) gives every rank the sums a single
process would hold (each value only meets zeros); the runs are then added in run order, so
every rank builds the same table and plan, equal to the bit to one process's profile of the
same runs with the same numerics (thread count, device). Under Ulysses, q, k, v come from
projections of sequence shards, equal to one process's to rounding. Kernel times
(``cost="time"``) are measured on rank 0 and broadcast, the progress bar shows on rank 0, and
an error on one rank is raised on every rank once the runs are over (under Ulysses, an error
inside the pipeline leaves the other ranks waiting in diffusers' all-to-all until the process
group's timeout).

Limits: the pipeline is called once per (prompt, seed), with ``output_type="latent"`` unless
``call_kwargs`` says otherwise. Context parallelism: Ulysses over all processes only (no ring
attention, no tensor parallelism). Each rank holds the per-run sums, runs x sampled steps x
layers x heads x candidates float64 numbers.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

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


#: The per-run sums a recorder keeps, by name: ``err`` ``[S, L, H, C]`` squared error of each
#: candidate, ``norm`` ``[S, L, H]`` squared dense norm, ``dens`` ``[L, H, C]`` summed density,
#: ``calls`` ``[S, L, H]`` measured calls (S sampled steps, L layers, H heads, C candidates).
_SUMS = ("err", "norm", "dens", "calls")


def _zero_sums(steps: int, layers: int, heads: int, cands: int,
               runs: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Zero sums (:data:`_SUMS`), with a leading ``[runs]`` dimension when ``runs`` is given."""
    lead = () if runs is None else (runs,)
    shapes = {"err": (steps, layers, heads, cands), "norm": (steps, layers, heads), "dens": (layers, heads, cands),
              "calls": (steps, layers, heads)}
    return {k: torch.zeros(lead + shapes[k], dtype=torch.float64) for k in _SUMS}


class _Recorder:
    """The attention function of a profiling run: dense output, candidate errors on sampled steps.

    Sums are kept per run (one pipeline call), so that the runs' contributions are added in
    run order whichever process ran them (:func:`_table_from`). Under Ulysses context
    parallelism (``head_split``) a call holds heads ``call.head_offset ...`` only, and its
    sums go to those heads' slots."""

    def __init__(self, layers: Sequence[str], heads: int, candidates: Sequence[Pattern], sample_steps: Iterable[int],
                 on_step=None, head_split: bool = False):
        self.index = {name: i for i, name in enumerate(layers)}
        self.heads = heads
        self.candidates = list(candidates)
        self.sample_steps = sorted(set(sample_steps))
        self.step_pos = {s: i for i, s in enumerate(self.sample_steps)}
        self.on_step = on_step
        self.head_split = head_split
        self.sums: Dict[int, Dict[str, torch.Tensor]] = {}
        self.grid: Optional[Tuple[int, int, int]] = None
        self.text_len: Optional[int] = None
        self.local_heads = heads
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
        if step not in self.step_pos:
            return dense
        if self.grid is None:
            self.grid, self.text_len = layout.grid, layout.text_len
            self.layout, self.head_dim, self.device, self.dtype = layout, q.shape[-1], q.device, q.dtype
            self.local_heads = q.shape[2]
        elif layout.grid != self.grid:
            raise ValueError(f"token grid changed during profiling: {layout.grid} after {self.grid}; profile one "
                             "resolution at a time")
        h0 = int(getattr(self.call, "head_offset", 0)) if self.head_split else 0
        h1 = h0 + q.shape[2]
        if h1 > self.heads or (not self.head_split and q.shape[2] != self.heads):
            raise RuntimeError(f"layer {layer_name!r}: got heads {h0}..{h1 - 1}, expected {self.heads} heads (is "
                               "the transformer sharded by a parallelism profiling does not know?)")
        _, diff_sq, dense_sq, density = candidate_errors(q, k, v, self.candidates, layout, key_mask=key_mask,
                                                         scale=scale, dense=dense)
        sums = self.sums.get(self.run)
        if sums is None:
            sums = self.sums[self.run] = _zero_sums(len(self.sample_steps), len(self.index), self.heads,
                                                    len(self.candidates))
        i, s = self.index[layer_name], self.step_pos[step]
        sums["err"][s, i, h0:h1] += diff_sq
        sums["norm"][s, i, h0:h1] += dense_sq
        sums["dens"][i, h0:h1] += density
        sums["calls"][s, i, h0:h1] += 1
        return dense

    def stacked(self, runs: int) -> Dict[str, torch.Tensor]:
        """``{name: [runs, ...]}``: this process's per-run sums, zero for runs it did not record."""
        zero = _zero_sums(len(self.sample_steps), len(self.index), self.heads, len(self.candidates))
        return {k: torch.stack([self.sums[r][k] if r in self.sums else zero[k] for r in range(runs)])
                for k in _SUMS}


def _table_from(stacked: Dict[str, torch.Tensor], layers: Sequence[str], heads: int, candidates: Sequence[Pattern],
                sample_steps: Sequence[int], steps_seen: Iterable[int] = ()) -> ErrorTable:
    """The error table of per-run sums ``{name: [runs, ...]}`` (:data:`_SUMS`), the runs added
    in run order: the same table, to the bit, however the runs were spread over processes."""
    total = {}
    for k, t in stacked.items():
        total[k] = t[0].clone()
        for r in range(1, t.shape[0]):
            total[k] += t[r]
    ran = total["calls"].sum((1, 2)) > 0
    steps = [s for s, r in zip(sample_steps, ran.tolist()) if r]
    if not steps:
        raise RuntimeError(f"no self-attention call ran at the sampled steps {list(sample_steps)} "
                           f"(steps seen: {sorted(steps_seen)})")
    calls = total["calls"].sum(0)
    missing = [n for i, n in enumerate(layers) if (calls[i] == 0).all()]
    if missing:
        raise RuntimeError(f"self-attention layers {missing} never ran during profiling")
    partly = {n: (calls[i] == 0).nonzero().flatten().tolist() for i, n in enumerate(layers) if (calls[i] == 0).any()}
    if partly:
        raise RuntimeError(f"heads never measured during profiling, by layer: {partly}")
    err, norm = total["err"][ran], total["norm"][ran]
    errors = torch.where(norm[..., None] > 0, (err / norm[..., None].clamp_min(1e-300)).sqrt(), torch.zeros_like(err))
    density = (total["dens"] / calls[..., None]).clamp(0.0, 1.0)
    return ErrorTable(tuple(layers), heads, tuple(candidates), tuple(steps), errors, density, norm)


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
# Several processes
# --------------------------------------------------------------------------------------


class _Processes:
    """How one profile is spread over the processes of the default ``torch.distributed`` group.

    ``split``: ``"none"`` (this process alone), ``"runs"`` (rank ``r`` runs the (prompt, seed)
    runs ``r, r + world, ...`` for every head) or ``"heads"`` (diffusers' Ulysses context
    parallelism: every rank runs every run, for its slice of the heads). Either way each
    (run, head) is measured by exactly one rank, so a SUM of the per-run sums, zero where a
    rank measured nothing, adds only zeros to each value: every rank ends with the same sums,
    to the bit, as one process measuring everything.
    """

    def __init__(self, split: str = "none", rank: int = 0, world: int = 1, device: Optional[torch.device] = None):
        self.split, self.rank, self.world = split, rank, world
        self.device = device or torch.device("cpu")

    @property
    def many(self) -> bool:
        return self.split != "none"

    def mine(self, runs: int) -> List[int]:
        """The runs this process runs, in order."""
        if self.split == "runs":
            return list(range(self.rank, runs, self.world))
        return list(range(runs))

    def _collective(self, name: str, t: torch.Tensor, *args) -> torch.Tensor:
        import torch.distributed as dist

        t = t.to(self.device)
        getattr(dist, name)(t, *args)
        return t.cpu()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        return self._collective("all_reduce", t, dist.ReduceOp.SUM)

    def from_rank0(self, t: torch.Tensor) -> torch.Tensor:
        return self._collective("broadcast", t, 0)

    def ranks_where(self, flag: bool) -> List[int]:
        """The ranks on which ``flag`` is true (every rank takes part)."""
        flags = torch.zeros(self.world, dtype=torch.float64)
        flags[self.rank] = float(bool(flag))
        return self.sum(flags).nonzero().flatten().tolist()

    def raise_if_failed(self, error: Optional[BaseException]) -> None:
        """Every rank learns whether any failed; a failed rank raises its own error, the others say which failed."""
        failed = self.ranks_where(error is not None)
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(f"profiling failed on rank(s) {failed} of {self.world}; their own error says why")

    def rank0_json(self, value: Any) -> Any:
        """Rank 0's JSON-able ``value`` on every rank (sent as UTF-8 bytes)."""
        data = _json(value).encode() if self.rank == 0 else b""
        size = int(self.from_rank0(torch.tensor([len(data)], dtype=torch.int64)))
        buf = (torch.tensor(list(data), dtype=torch.uint8) if self.rank == 0 else
               torch.zeros(size, dtype=torch.uint8))
        return json.loads(bytes(self.from_rank0(buf).tolist()).decode())

    def check_same(self, what: str, mine: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """Rank 0's ``mine``; raises on every rank when another rank's (not None) differs."""
        ref = self.rank0_json(mine)
        # through JSON on this rank too, so that tuples and lists compare equal
        here = None if mine is None else json.loads(_json(mine))
        diff = sorted(k for k in set(ref) | set(here or {}) if here is not None and here.get(k) != ref.get(k))
        bad = self.ranks_where(bool(diff))
        if bad:
            mine_note = f" (here, rank {self.rank}: {diff} differ)" if diff else ""
            raise ValueError(f"rank(s) {bad} {what} unlike rank 0{mine_note}; every rank must profile the same "
                             "pipeline with the same arguments")
        return ref


def _reduced_table(procs: _Processes, recorder: Optional[_Recorder], runs: int, layers: Sequence[str], heads: int,
                   candidates: Sequence[Pattern], sample_steps: Sequence[int]) -> ErrorTable:
    """The error table of every rank's sums (``recorder`` None: this rank measured nothing)."""
    stacked = (recorder.stacked(runs) if recorder is not None else
               _zero_sums(len(sample_steps), len(layers), heads, len(candidates), runs=runs))
    if procs.many:
        flat = procs.sum(torch.cat([stacked[k].flatten() for k in _SUMS]))
        parts = flat.split([stacked[k].numel() for k in _SUMS])
        stacked = {k: part.view_as(stacked[k]) for k, part in zip(_SUMS, parts)}
    return _table_from(stacked, layers, heads, candidates, sample_steps,
                       recorder.steps_seen if recorder is not None else ())


def _json(value: Any) -> str:
    """JSON text of ``value``; what JSON cannot hold (tensors, callables) by its type only, since
    its repr may differ between processes (addresses)."""
    return json.dumps(value, sort_keys=True, default=lambda o: f"<{type(o).__name__}>")


def _parallel_configs(pipe) -> List[Any]:
    from .api import _transformers

    models, _ = _transformers(pipe)
    return [c for _, m in models for c in [getattr(m, "_parallel_config", None)] if c is not None]


def _processes(pipe, distributed: Optional[bool]) -> _Processes:
    """How to spread a profile of ``pipe`` (see :func:`profile`'s ``distributed``)."""
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed={distributed!r} must be None (automatic), True or False")
    import torch.distributed as dist

    on = dist.is_available() and dist.is_initialized()
    if distributed and not on:
        raise RuntimeError("distributed=True but torch.distributed is not initialised: launch with torchrun and "
                           "call torch.distributed.init_process_group() before profiling")
    configs = _parallel_configs(pipe)
    if any(getattr(c, "tensor_parallel_config", None) is not None for c in configs):
        raise NotImplementedError("profiling under tensor parallelism is not supported (each rank would measure "
                                  "partial heads); profile with context parallelism (Ulysses) or data parallelism")
    cps = [c.context_parallel_config for c in configs if getattr(c, "context_parallel_config", None) is not None]
    if not on or distributed is False:
        if cps:
            raise ValueError(f"distributed={distributed!r}, but the transformer runs under context parallelism, "
                             "which needs torch.distributed; pass distributed=None or True")
        return _Processes()
    rank, world = dist.get_rank(), dist.get_world_size()
    device = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
              else torch.device("cpu"))
    for cp in cps:
        if cp.ring_degree > 1 or getattr(cp, "ulysses_anything", False) or cp.ulysses_degree != world:
            raise NotImplementedError(
                "profiling under context parallelism needs Ulysses over every process (ulysses_degree == world "
                f"size), got ulysses_degree={cp.ulysses_degree}, ring_degree={cp.ring_degree}, ulysses_anything="
                f"{getattr(cp, 'ulysses_anything', False)}, world size {world}")
    if cps:
        return _Processes("heads", rank, world, device)
    return _Processes("runs", rank, world, device) if world > 1 else _Processes()


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

    def error_summary(self) -> str:
        """The measured table, one line per candidate: its mean density, its kernel time
        relative to dense (when timed) and its relative L2 error per layer (heads and sampled
        steps averaged), so that a selection can be checked by eye."""
        t = self.table
        err = t.errors.mean(0)  # [layers, heads, candidates]
        width = max(len(c.spec) for c in t.candidates)
        lines = [f"{'candidate':{width}s}  density    time  " + "  ".join(f"{name:>14s}" for name in t.layers)]
        for c, cand in enumerate(t.candidates):
            time = "   n/a" if t.time is None else f"{float(t.time[c]):6.3f}"
            lines.append(f"{cand.spec:{width}s}  {float(t.density[..., c].mean()):7.3f}  {time}  "
                         + "  ".join(f"{float(err[i, :, c].mean()):14.3f}" for i in range(len(t.layers))))
        return "\n".join(lines)


def profile(pipe, prompts, *, candidates=None, max_error: Optional[float] = None, budget: Optional[float] = None,
            num_inference_steps: Optional[int] = None, sample_steps: Optional[Sequence[int]] = None,
            seeds: Sequence[int] = (0,), height: Optional[int] = None, width: Optional[int] = None,
            num_frames: Optional[int] = None, progress: bool = True, dense_bound: Optional[float] = None,
            max_dense_fraction: float = 0.5, model_name: Optional[str] = None,
            call_kwargs: Optional[Dict[str, Any]] = None, per_head: bool = True, cost: str = "density",
            phases: Optional[Sequence[Tuple[int, float]]] = None, distributed: Optional[bool] = None) -> Plan:
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
        distributed: ``None`` (default): when ``torch.distributed`` is initialised with more
            than one process, profile over all of them (every rank must call ``profile`` with
            the same arguments; see the module docstring); ``True``: the same, and an error
            when it is not initialised; ``False``: profile in this process alone.
    Returns:
        a :class:`dit_sparse.Plan` (the same on every rank when distributed).
    """
    mode, _ = check_mode(max_error, budget)
    check_phases(phases, mode)
    check_cost(cost)
    measured = measure(pipe, prompts, candidates=candidates, num_inference_steps=num_inference_steps,
                       sample_steps=sample_steps, seeds=seeds, height=height, width=width, num_frames=num_frames,
                       progress=progress, model_name=model_name, call_kwargs=call_kwargs,
                       time_kernels=cost == "time", distributed=distributed)
    return measured.plan(max_error=max_error, budget=budget, dense_bound=dense_bound,
                         max_dense_fraction=max_dense_fraction, per_head=per_head, cost=cost, phases=phases)


def measure(pipe, prompts, *, candidates=None, num_inference_steps: Optional[int] = None,
            sample_steps: Optional[Sequence[int]] = None, seeds: Sequence[int] = (0,), height: Optional[int] = None,
            width: Optional[int] = None, num_frames: Optional[int] = None, progress: bool = True,
            model_name: Optional[str] = None, call_kwargs: Optional[Dict[str, Any]] = None,
            time_kernels: bool = False, distributed: Optional[bool] = None) -> Measurement:
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

    procs = _processes(pipe, distributed)
    if procs.many:
        given = None if candidates is None else [p.to_dict() for p in _check_candidates(candidates, (1, 1, 1))]
        procs.check_same("were given other arguments", {
            "model": [desc["class"], desc["layers"], desc["heads"]], "prompts_sha256": prompts_digest(prompts),
            "seeds": seeds, "sample_steps": steps, "call": kwargs, "candidates": given, "split": procs.split,
            "time_kernels": bool(time_kernels)})
    runs = [(prompt, seed) for prompt in prompts for seed in seeds]
    mine = procs.mine(len(runs))

    bar = None
    if progress and procs.rank == 0:
        from tqdm.auto import tqdm

        where = f" (rank 0 of {procs.world})" if procs.many else ""
        bar = tqdm(total=len(mine) * num_inference_steps, desc=f"profiling{where}", unit="step")

    # The candidates depend on the grid, known at the first self-attention call: the recorder
    # is built lazily through this holder.
    holder: Dict[str, Any] = {}

    def observer(call, proceed):
        rec = holder.get("recorder")
        if rec is None:
            cands = _check_candidates(candidates, call.layout.grid)
            rec = holder["recorder"] = _Recorder(desc["layers"], desc["heads"], cands, steps,
                                                 on_step=(lambda s: bar.update(1)) if bar is not None else None,
                                                 head_split=procs.split == "heads")
            rec.run = holder.get("run", 0)
        return rec.observe(call, proceed)

    saved_bar = getattr(pipe, "_progress_bar_config", None)
    saved_bar = dict(saved_bar) if saved_bar is not None else None
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    handle = apply(pipe, _AllFull(), dense_steps=0)
    watch = observe(pipe, observer)
    error: Optional[Exception] = None
    try:
        for run in mine:
            prompt, seed = runs[run]
            holder["run"] = run
            if "recorder" in holder:
                holder["recorder"].run = run
            handle.steps.reset()
            generator = torch.Generator(device="cpu").manual_seed(seed)
            with torch.no_grad():
                pipe(prompt=prompt, generator=generator, **kwargs)
        if mine and "recorder" not in holder:
            raise RuntimeError("the pipeline ran no self-attention layer while profiling")
    except Exception as exc:
        if not procs.many:
            raise
        error = exc  # told to the other ranks below, which would otherwise wait for this one forever
    finally:
        watch.remove()
        handle.remove()
        if saved_bar is not None:
            pipe._progress_bar_config = saved_bar
        elif hasattr(pipe, "_progress_bar_config"):
            del pipe._progress_bar_config
        if bar is not None:
            bar.close()

    recorder: Optional[_Recorder] = holder.get("recorder")
    meta = None
    if recorder is not None:
        meta = {"grid": list(recorder.grid or ()), "text_len": recorder.text_len or 0,
                "candidates": [p.to_dict() for p in recorder.candidates]}
    if procs.many:
        procs.raise_if_failed(error)
        # a rank with no run of its own (fewer runs than ranks) takes the grid and candidates of rank 0
        meta = procs.check_same("measured another grid or other candidates", meta)
    cands = recorder.candidates if recorder is not None else [parse_pattern(c) for c in meta["candidates"]]
    table = _reduced_table(procs, recorder, len(runs), desc["layers"], desc["heads"], cands, steps)
    if time_kernels:
        # timed on rank 0 only, so that every rank ranks candidates by the same times
        times = torch.zeros(len(cands), dtype=torch.float64)
        if procs.rank == 0:
            times = time_candidates(table.candidates, recorder.layout, recorder.local_heads, recorder.head_dim,
                                    device=recorder.device, dtype=recorder.dtype)
        table.time = procs.from_rank0(times) if procs.many else times
    context = dict(prompts=prompts, seeds=seeds, num_inference_steps=num_inference_steps, height=height, width=width,
                   num_frames=num_frames, text_len=meta["text_len"], grid=tuple(meta["grid"]), model_name=model_name)
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
