"""The runtime of :func:`dit_sparse.apply`: one hook per transformer, one wrapper per layer.

How a self-attention call reaches :func:`dit_sparse.sparse_attention`:

1. :class:`SparseAttentionHook` (a diffusers ``ModelHook`` on the transformer) runs before
   every transformer forward. It records the post-patchify grid ``(T, H, W)`` and the joint
   text length of this forward (from the family adapter), and advances the denoising step
   when the timestep value changes (so separate cond/uncond forwards of one step count
   once, and CFG batched as B = 2 too). It decides once per forward whether this step runs
   sparse (after the dense warm-up) and stores that as a bool, so that ``torch.compile``
   guards on a bool rather than on a step counter.
2. Each sparsified attention module's processor is replaced by :class:`SparseProcessor`,
   which delegates to the *original* processor object (projections, norms and RoPE are the
   model's own) while marking "this layer is active".
3. The model's processor calls its attention core through a module-level name:
   ``dispatch_attention_fn`` or ``F.scaled_dot_product_attention``. While any handle is
   applied, that name in the family's module is a shim (:func:`install_shim`) that runs the
   sparse core when a layer is active and the call is the self-attention call (queries and
   keys of one length), and otherwise calls the original function unchanged. The shims are
   removed when the last handle is removed, restoring the module exactly.

Observers (:func:`observe`) are the one public way to watch or replace a self-attention core
call: the shim hands every self-attention call of the observed families to the registered
observers, in order, as an :class:`AttentionCall`; each observer returns the output, usually
by calling ``proceed()`` (the next observer, and finally the call the shim would have made).
The profiler records candidate errors through one, the CLI's attention meter times calls
through one, and research scripts compare patterns through them; nothing else patches a
module global.

Under diffusers' context parallelism with Ulysses, the shim goes through diffusers' own
Ulysses all-to-all (``_templated_context_parallel_attention``) with a forward op that runs
the sparse core on the rank's heads, offsetting per-head patterns by the rank's first head;
observers see that call (every token, the rank's heads, ``AttentionCall.head_offset``).
Ring attention needs log-sum-exp outputs and is not supported.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook

from dit_sparse.layout import TokenLayout
from dit_sparse.ops import sparse_attention
from dit_sparse.patterns import Full, Pattern

from .adapters import Adapter

HOOK_NAME = "dit_sparse"

# --------------------------------------------------------------------------------------
# Which layer is running (set by SparseProcessor around the original processor's call)
# --------------------------------------------------------------------------------------


class _Active:
    """The sparsified layer whose processor is running, or None. Diffusers runs one
    attention module at a time per process; this is a plain object (not a ContextVar) so
    that torch.compile can trace reads and writes of it."""

    layer: Optional["SparseLayer"] = None


_ACTIVE = _Active()


# --------------------------------------------------------------------------------------
# Per-run step tracking, shared by the transformers of one pipeline (Wan 2.2's experts)
# --------------------------------------------------------------------------------------


def _timestep_value(timestep) -> Optional[float]:
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        return float(timestep.detach().float().max().item()) if timestep.numel() else None
    return float(timestep)


def _distinct_steps(timesteps) -> int:
    values = [float(t) for t in timesteps]
    return sum(1 for i, t in enumerate(values) if i == 0 or t != values[i - 1])


class StepTracker:
    """Denoising step of the current pipeline run, and whether it runs sparse.

    A new step starts when the timestep value changes; a value larger than the previous
    one (or the first forward) starts a new run at step 0. ``dense_steps`` is an int, or a
    fraction in (0, 1) of the run's steps, resolved at the start of each run from the
    pipeline's scheduler (``ceil(fraction * steps)`` steps run dense).

    ``phase_starts`` (increasing steps) split the sparse steps into phases: ``phase`` is how
    many of them the current step has reached (0 before the first), and picks the patterns
    of a plan with phases.

    ``log`` holds one ``(step, timestep, sparse)`` entry per step of the latest run.
    ``on_run``, when set, is called at the start of each run with its number of steps (when
    the pipeline's scheduler tells it; a plan with phases warns on another step count).
    """

    def __init__(self, dense_steps, pipeline=None, phase_starts: Sequence[int] = ()):
        self.dense_steps = dense_steps
        self.pipeline = pipeline
        self.phase_starts = tuple(int(s) for s in phase_starts)
        self.phase = 0
        self.on_run: Optional[Callable[[int], None]] = None
        self.step = 0
        self.last: Optional[float] = None
        self.dense_resolved = 0
        self.sparse_now = True
        self.log: List[Tuple[int, Optional[float], bool]] = []

    def _run_steps(self) -> Optional[int]:
        """Steps of the current run from the pipeline's scheduler, or None if unknown."""
        timesteps = getattr(getattr(self.pipeline, "scheduler", None), "timesteps", None)
        return None if timesteps is None or len(timesteps) == 0 else _distinct_steps(timesteps)

    def _resolve(self) -> int:
        n = self._run_steps()
        if n is not None and self.on_run is not None:
            self.on_run(n)
        if isinstance(self.dense_steps, int):
            return self.dense_steps
        if n is None:
            raise RuntimeError(f"dense_steps={self.dense_steps} is a fraction of the schedule, but the pipeline's "
                               "scheduler has no timesteps set; call through the pipeline or pass an int")
        return math.ceil(self.dense_steps * n - 1e-9)

    def observe(self, timestep) -> None:
        value = _timestep_value(timestep)
        if self.last is None and not self.log or (value is not None and self.last is not None and value > self.last):
            self.step = 0
            self.log = []
            self.dense_resolved = self._resolve()
        elif value is not None and value != self.last:
            self.step += 1
        if value is not None:
            self.last = value
        self.sparse_now = self.step >= self.dense_resolved
        self.phase = sum(1 for start in self.phase_starts if self.step >= start)
        if not self.log or self.log[-1][0] != self.step:
            self.log.append((self.step, value, self.sparse_now))

    def reset(self) -> None:
        self.step, self.last, self.log = 0, None, []


# --------------------------------------------------------------------------------------
# The hook on the transformer
# --------------------------------------------------------------------------------------


class ForwardState:
    """What one transformer forward looks like: grid after patchify and joint text length."""

    def __init__(self, adapter: Adapter, steps: StepTracker):
        self.adapter = adapter
        self.steps = steps
        self.grid: Optional[Tuple[int, int, int]] = None
        self.text_len = 0
        # Called with each forward's grid when set (a plan's ``check_grid`` warns on a grid
        # other than the profiled one).
        self.on_grid: Optional[Callable[[Tuple[int, int, int]], None]] = None


class SparseAttentionHook(ModelHook):
    """Records grid, text length and step before every forward of a transformer."""

    def __init__(self, state: ForwardState):
        super().__init__()
        self.state = state
        self._signature = None

    @torch.compiler.disable
    def pre_forward(self, module, *args, **kwargs):
        if self._signature is None:
            self._signature = inspect.signature(type(module).forward)
        bound = self._signature.bind_partial(module, *args, **kwargs).arguments
        adapter = self.state.adapter
        self.state.grid = tuple(adapter.grid(module, bound))
        self.state.text_len = int(adapter.text_len(module, bound)) if adapter.text_position else 0
        if self.state.on_grid is not None:
            self.state.on_grid(self.state.grid)
        self.state.steps.observe(bound.get("timestep"))
        return args, kwargs


def register_hook(model: torch.nn.Module, hook: SparseAttentionHook) -> Callable[[], None]:
    """Register ``hook`` on ``model``; returns a function that removes it and undoes every
    trace of it (the registry attribute and the instance ``forward`` when they were ours)."""
    had_registry = hasattr(model, "_diffusers_hook")
    had_forward = "forward" in model.__dict__
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.register_hook(hook, HOOK_NAME)

    def undo():
        registry.remove_hook(HOOK_NAME, recurse=False)
        if not registry.hooks:
            if not had_forward:
                model.__dict__.pop("forward", None)
            if not had_registry and getattr(model, "_diffusers_hook", None) is registry:
                del model._diffusers_hook

    return undo


# --------------------------------------------------------------------------------------
# One sparsified layer
# --------------------------------------------------------------------------------------


def head_runs(patterns: Sequence[Pattern]) -> Tuple[Tuple[int, int, Pattern], ...]:
    """Split per-head patterns into ``(first_head, end_head, pattern)`` runs of equal ones."""
    runs: List[Tuple[int, int, Pattern]] = []
    for h, p in enumerate(patterns):
        if runs and runs[-1][2] == p:
            runs[-1] = (runs[-1][0], h + 1, p)
        else:
            runs.append((h, h + 1, p))
    return tuple(runs)


def key_mask_from(attn_mask: Optional[torch.Tensor], batch: int, seq: int) -> Optional[torch.Tensor]:
    """A ``[B, S]`` bool key mask from a key-padding attention mask (bool, True = keep, or
    additive float, 0 = keep) of shape ``[B, S]``, ``[B, 1, S]`` or ``[B, 1, 1, S]``, or from
    a padding mask on both sides, ``[B, 1, S, S]`` (or ``[B, S, S]``) holding
    ``keep[q] & keep[k]`` (HunyuanVideo 1.5): its first row's queries see the kept keys (the
    first token is a video token, never padding); padded queries then attend to the kept keys
    instead of to nothing, which changes only rows the model discards. Checked in O(S): the
    first row must equal the diagonal (a causal or block mask fails that)."""
    if attn_mask is None:
        return None
    m = attn_mask
    while m.dim() > 2 and m.shape[1] == 1:
        m = m.squeeze(1)
    if m.dim() == 3 and m.shape[-2:] == (seq, seq) and m.shape[0] in (1, batch):
        m = m if m.dtype == torch.bool else m == 0
        first, diagonal = m[:, 0, :], m.diagonal(dim1=-2, dim2=-1)
        if bool(first[:, 0].all()) and torch.equal(first, diagonal):
            return first.expand(batch, seq)
    if m.dim() != 2 or m.shape[-1] != seq or m.shape[0] not in (1, batch):
        raise ValueError(f"attention mask of shape {tuple(attn_mask.shape)} is not a key padding mask for "
                         f"batch={batch}, seq={seq}; sparse attention supports key padding masks only")
    m = m if m.dtype == torch.bool else m == 0
    return m.expand(batch, seq)


class SparseLayer:
    """A sparsified self-attention module: its patterns and how to run its core call.

    ``phases`` holds one per-head pattern tuple per phase of the step tracker (one entry
    for a schedule without phases), None where the layer stays dense in that phase.
    """

    def __init__(self, name: str, heads: int, phases: Sequence[Optional[Sequence[Pattern]]], state: ForwardState,
                 backend: Optional[str]):
        for p in phases:
            if p is not None and len(p) != heads:
                raise ValueError(f"layer {name!r} has {heads} heads but got {len(p)} patterns")
        if len(phases) not in (1, len(state.steps.phase_starts) + 1):
            raise ValueError(f"layer {name!r}: {len(phases)} pattern phases for a schedule of "
                             f"{len(state.steps.phase_starts) + 1}")
        self.name = name
        self.heads = heads
        self.phase_patterns = tuple(None if p is None else tuple(p) for p in phases)
        self.phase_runs = tuple(None if p is None else head_runs(p) for p in self.phase_patterns)
        self.state = state
        self.backend = backend

    def _phase(self) -> int:
        return self.state.steps.phase if len(self.phase_runs) > 1 else 0

    @property
    def patterns(self) -> Optional[Tuple[Pattern, ...]]:
        """Per-head patterns of the current phase (None: dense in this phase)."""
        return self.phase_patterns[self._phase()]

    @property
    def runs(self) -> Optional[Tuple[Tuple[int, int, Pattern], ...]]:
        return self.phase_runs[self._phase()]

    def claims(self, query: torch.Tensor, key: torch.Tensor, seq_dim: int) -> bool:
        """True when this core call is this layer's self-attention on a sparse step (and the
        layer is sparse in the current phase)."""
        return (self.state.steps.sparse_now and self.runs is not None
                and query.shape[seq_dim] == key.shape[seq_dim])

    def layout(self, seq: int) -> TokenLayout:
        state, adapter = self.state, self.state.adapter
        t, h, w = state.grid
        text_len = seq - t * h * w
        ok = text_len == 0 or (adapter.text_position is not None
                               and (adapter.variable_text and text_len > 0 or text_len == state.text_len))
        if not ok:
            raise RuntimeError(f"layer {self.name!r}: self-attention over {seq} tokens does not fit the grid "
                               f"{state.grid} ({t * h * w} tokens) with {state.text_len} text tokens")
        return TokenLayout(grid=state.grid, text_len=text_len, text_position=adapter.text_position or "first")

    def attend(self, q, k, v, attn_mask, scale, head_offset: int = 0, runs=None, fn: Callable = sparse_attention
               ) -> torch.Tensor:
        """Sparse core on ``[B, S, heads, head_dim]`` holding heads ``head_offset...``: ``fn``
        (``sparse_attention``'s signature) once per run of heads sharing a pattern (``runs``:
        this phase's, by default)."""
        b, s, h, _ = q.shape
        layout = self.layout(s)
        key_mask = key_mask_from(attn_mask, b, s)
        outs = []
        for h0, h1, pattern in self.runs if runs is None else runs:
            lo, hi = max(h0 - head_offset, 0), min(h1 - head_offset, h)
            if lo >= hi:
                continue
            outs.append(fn(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], pattern, layout, key_mask=key_mask,
                           scale=scale, backend=self.backend))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def attend_parallel(self, q, k, v, attn_mask, scale, parallel_config) -> torch.Tensor:
        """Sparse core under diffusers' context parallelism (Ulysses only)."""
        cp = getattr(parallel_config, "context_parallel_config", None)
        if cp is None:
            return self.attend(q, k, v, attn_mask, scale)
        if cp.ring_degree > 1 or getattr(cp, "ulysses_anything", False):
            raise NotImplementedError("dit_sparse supports context parallelism with Ulysses only "
                                      f"(got ring_degree={cp.ring_degree}, ulysses_anything="
                                      f"{getattr(cp, 'ulysses_anything', False)})")
        from diffusers.models import attention_dispatch

        rank = torch.distributed.get_rank(cp._ulysses_mesh.get_group())

        def forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                       enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
            offset = rank * query.shape[2]

            def default():
                return self.attend(query, key, value, attn_mask, scale, head_offset=offset)

            if _OBSERVERS:
                return _observed(AttentionCall(query, key, value, attn_mask, scale, self, True, head_offset=offset),
                                 default)
            return default()

        def backward_op(ctx, grad_out, *args, **kwargs):
            raise NotImplementedError("dit_sparse attention under context parallelism is inference-only")

        return attention_dispatch._templated_context_parallel_attention(
            q, k, v, attn_mask, 0.0, False, scale, False, False,
            forward_op=forward_op, backward_op=backward_op, _parallel_config=parallel_config)


class ProcessorWrapper:
    """Base of the runtime's processor wrappers (:class:`SparseProcessor`, and
    :class:`~dit_sparse.pipelines.text_padding.TextPaddingProcessor`): holds the original
    processor object and delegates to it. ``_attention_backend`` and ``_parallel_config``
    (which diffusers sets on processors) read and write through to the original. Attention
    modules filter keyword arguments by ``inspect.signature(processor.__call__)``, so
    :func:`wrapper_class` makes one subclass per (wrapper, original processor class) whose
    ``__call__`` carries the original's signature."""

    name_prefix = "Wrapped"

    def __init__(self, original):
        self.original = original

    @property
    def _attention_backend(self):
        return getattr(self.original, "_attention_backend", None)

    @_attention_backend.setter
    def _attention_backend(self, value):
        self.original._attention_backend = value

    @property
    def _parallel_config(self):
        return getattr(self.original, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, value):
        self.original._parallel_config = value


@functools.lru_cache(maxsize=None)
def wrapper_class(base: type, original_cls: type) -> type:
    """The subclass of ``base`` (a :class:`ProcessorWrapper`) for processors of
    ``original_cls``: its ``__call__`` is ``base.__call__`` with the original's signature."""
    signature = inspect.signature(original_cls.__call__)

    def __call__(self, *args, **kwargs):
        return base.__call__(self, *args, **kwargs)

    __call__.__signature__ = signature
    return type(f"{base.name_prefix}{original_cls.__name__}", (base,), {"__call__": __call__})


class SparseProcessor(ProcessorWrapper):
    """Wraps a layer's original processor: runs it unchanged with this layer marked active."""

    name_prefix = "Sparse"

    def __init__(self, original, layer: SparseLayer):
        super().__init__(original)
        self.layer = layer

    def __call__(self, attn, *args, **kwargs):
        _ACTIVE.layer = self.layer
        try:
            return self.original(attn, *args, **kwargs)
        finally:
            _ACTIVE.layer = None

    def __repr__(self):
        return f"{type(self).__name__}({self.original!r}, layer={self.layer.name!r})"


def wrap_processor(original, layer: SparseLayer) -> SparseProcessor:
    """The wrapper of ``original`` (a processor object) for ``layer``."""
    return wrapper_class(SparseProcessor, type(original))(original, layer)


# --------------------------------------------------------------------------------------
# Observers: the public way to watch or replace a self-attention core call
# --------------------------------------------------------------------------------------


class AttentionCall:
    """One self-attention core call, as an observer sees it.

    Attributes:
        query, key, value: ``[B, S, heads, head_dim]`` (the layout of ``dispatch_attention_fn``,
            also for families that call ``F.scaled_dot_product_attention`` with heads first).
        attn_mask, scale: as the model's processor passed them.
        layer: name of the sparsified layer making the call (``"blocks.3.attn1"``), or None
            for a self-attention call outside the layers :func:`dit_sparse.apply` wrapped.
        sparse: True when, without observers, the call runs the sparse core (a sparsified
            layer after its dense warm-up steps, with patterns in the current phase).
        step: denoising step of the layer's run (None outside a sparsified layer).
        patterns: per-head patterns of the current phase (None when the layer is dense now,
            or outside a sparsified layer).
        head_offset: the layer's index of ``query``'s first head: 0, except under Ulysses
            context parallelism, where a rank sees every token for heads ``head_offset ...``
            only (and only the calls a sparsified layer claims on its sparse steps).
    """

    def __init__(self, query, key, value, attn_mask, scale, layer: Optional["SparseLayer"], sparse: bool,
                 head_offset: int = 0):
        self.query, self.key, self.value = query, key, value
        self.attn_mask, self.scale = attn_mask, scale
        self._layer = layer
        self.sparse = bool(sparse)
        self.head_offset = int(head_offset)

    @property
    def layer(self) -> Optional[str]:
        return None if self._layer is None else self._layer.name

    @property
    def step(self) -> Optional[int]:
        return None if self._layer is None else self._layer.state.steps.step

    @property
    def patterns(self) -> Optional[Tuple[Pattern, ...]]:
        return None if self._layer is None else self._layer.patterns

    @property
    def layout(self) -> TokenLayout:
        """Token layout of the call (grid, joint text); needs a sparsified layer."""
        return self._require("layout").layout(self.query.shape[1])

    @property
    def key_mask(self) -> Optional[torch.Tensor]:
        """``[B, S]`` bool mask of the keys that take part (None: all), from ``attn_mask``."""
        b, s = self.query.shape[:2]
        return key_mask_from(self.attn_mask, b, s)

    def _require(self, what: str) -> "SparseLayer":
        if self._layer is None:
            raise RuntimeError(f"AttentionCall.{what} needs a layer that dit_sparse.apply sparsified; this "
                               "self-attention call runs outside one (apply ds.Full() to watch every layer)")
        return self._layer

    def run(self, fn: Optional[Callable] = None, patterns=None) -> torch.Tensor:
        """The call's output through ``fn`` (a function with :func:`dit_sparse.sparse_attention`'s
        signature, called once per run of heads sharing a pattern; default: that function with
        the layer's backend) under ``patterns`` (one pattern for every head or one per head;
        default: the current phase's, dense when the layer is dense now)."""
        layer = self._require("run")
        if patterns is None:
            patterns = layer.patterns or (Full(),) * layer.heads
        elif isinstance(patterns, Pattern):
            patterns = (patterns,) * layer.heads
        elif len(patterns) != layer.heads:
            raise ValueError(f"patterns: {len(patterns)} given for layer {layer.name!r}, which has {layer.heads} "
                             "heads; pass one pattern or one per head")
        return layer.attend(self.query, self.key, self.value, self.attn_mask, self.scale, self.head_offset,
                            runs=head_runs(patterns), fn=fn or sparse_attention)

    def density(self) -> float:
        """Fraction of query-key pairs the call computes: 1 when it runs dense, else the
        patterns' block-level density averaged over heads (data-dependent patterns are
        evaluated on this call's queries and keys)."""
        layer = self._layer
        if not self.sparse or layer is None:
            return 1.0
        layout = self.layout
        heads = self.query.shape[2]
        total = 0.0
        for h0, h1, pattern in layer.runs:
            lo, hi = max(h0 - self.head_offset, 0), min(h1 - self.head_offset, heads)
            if lo >= hi:
                continue
            try:
                d = _static_density(pattern, layout)
            except ValueError:  # data-dependent (BlockSparse with a threshold)
                d = pattern.density(layout, q=self.query[:, :, lo:hi], k=self.key[:, :, lo:hi])
            total += d * (hi - lo)
        return total / heads

    def __repr__(self):
        return (f"AttentionCall(layer={self.layer!r}, step={self.step}, sparse={self.sparse}, "
                f"shape={tuple(self.query.shape)})")


@functools.lru_cache(maxsize=256)
def _static_density(pattern: Pattern, layout: TokenLayout) -> float:
    return pattern.density(layout)


#: Observers in registration order (the first registered is outermost).
_OBSERVERS: List[Callable] = []


def _observed(call: AttentionCall, default: Callable[[], torch.Tensor]) -> torch.Tensor:
    chain = tuple(_OBSERVERS)

    def proceed_from(i: int) -> torch.Tensor:
        if i == len(chain):
            return default()
        return chain[i](call, lambda: proceed_from(i + 1))

    return proceed_from(0)


class ObserverHandle:
    """What :func:`observe` did; ``remove()`` undoes it (idempotent); a context manager."""

    def __init__(self, observer: Callable, keys: List[Tuple[str, str]]):
        self.observer = observer
        self._keys = keys
        self.removed = False

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        for i, o in enumerate(_OBSERVERS):
            if o is self.observer:
                del _OBSERVERS[i]
                break
        for key in self._keys:
            uninstall_shim(key)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def observe(adapters: Sequence[Adapter], observer: Callable) -> ObserverHandle:
    """Register ``observer(call, proceed) -> Tensor`` for the self-attention core calls of the
    families of ``adapters`` (see :func:`dit_sparse.observe`)."""
    if not callable(observer):
        raise TypeError(f"observer={observer!r} must be callable as observer(call, proceed)")
    keys: List[Tuple[str, str]] = []
    try:
        for adapter in adapters:
            keys.append(install_shim(adapter))
    except BaseException:
        for key in keys:
            uninstall_shim(key)
        raise
    _OBSERVERS.append(observer)
    return ObserverHandle(observer, keys)


# --------------------------------------------------------------------------------------
# Shims for the module-level names processors call
# --------------------------------------------------------------------------------------


def _dispatch_shim(original):
    @functools.wraps(original)
    def dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                              enable_gqa=False, attention_kwargs=None, *, backend=None, parallel_config=None):
        layer = _ACTIVE.layer
        claimed = layer is not None and not is_causal and dropout_p == 0.0 and layer.claims(query, key, 1)
        if claimed and parallel_config is not None:
            return layer.attend_parallel(query, key, value, attn_mask, scale, parallel_config)

        def default():
            if claimed:
                return layer.attend(query, key, value, attn_mask, scale)
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, attention_kwargs,
                            backend=backend, parallel_config=parallel_config)

        if _OBSERVERS and query.dim() == 4 and query.shape[1] == key.shape[1] and parallel_config is None:
            return _observed(AttentionCall(query, key, value, attn_mask, scale, layer, claimed), default)
        return default()

    return dispatch_attention_fn


def _functional_shim(original_module):
    """A copy of ``torch.nn.functional`` whose ``scaled_dot_product_attention`` is the shim."""
    sdpa = original_module.scaled_dot_product_attention

    def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                     scale=None, **kwargs):
        layer = _ACTIVE.layer
        plain = not is_causal and dropout_p == 0.0 and not kwargs and query.dim() == 4
        claimed = layer is not None and plain and layer.claims(query, key, 2)
        if not claimed and not (_OBSERVERS and plain and query.shape[2] == key.shape[2]):
            return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, **kwargs)
        q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)

        def default():
            if claimed:
                return layer.attend(q, k, v, attn_mask, scale)
            return sdpa(query, key, value, attn_mask=attn_mask, scale=scale).transpose(1, 2)

        if _OBSERVERS:
            return _observed(AttentionCall(q, k, v, attn_mask, scale, layer, claimed), default).transpose(1, 2)
        return default().transpose(1, 2)

    proxy = types.ModuleType(original_module.__name__, original_module.__doc__)
    proxy.__dict__.update({k: v for k, v in vars(original_module).items() if k not in ("__name__", "__doc__")})
    proxy.scaled_dot_product_attention = scaled_dot_product_attention
    return proxy


_SHIM_ATTR = {"dispatch": "dispatch_attention_fn", "sdpa": "F"}
_INSTALLED: Dict[Tuple[str, str], List[Any]] = {}  # (module, attr) -> [original, refcount]


def install_shim(adapter: Adapter) -> Tuple[str, str]:
    """Point the family module's core name at a shim (reference counted); returns its key."""
    attr = _SHIM_ATTR[adapter.core]
    key = (adapter.core_module, attr)
    if key in _INSTALLED:
        _INSTALLED[key][1] += 1
        return key
    module = importlib.import_module(adapter.core_module)
    original = getattr(module, attr)
    if adapter.core == "sdpa" and original is not F:
        raise RuntimeError(f"{adapter.core_module}.F is not torch.nn.functional (found {original!r}); "
                           "another library has patched it")
    shim = _dispatch_shim(original) if adapter.core == "dispatch" else _functional_shim(original)
    setattr(module, attr, shim)
    _INSTALLED[key] = [original, 1]
    return key


def uninstall_shim(key: Tuple[str, str]) -> None:
    entry = _INSTALLED.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        setattr(importlib.import_module(key[0]), key[1], entry[0])
        del _INSTALLED[key]
