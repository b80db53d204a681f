"""``apply`` / ``remove`` / ``applied``: swap sparse attention into a diffusers pipeline.

``spec`` says which pattern each self-attention layer uses:

* one pattern (a :class:`~dit_sparse.Pattern`, its dict form or a spec string such as
  ``"neighborhood:kernel=3x9x9"``) for every self-attention layer;
* a ``{regex: pattern}`` dict: each layer takes the first entry whose regex matches its
  name (``re.search`` over ``named_modules()`` names; a pattern may also be a list with
  one pattern per head); unmatched layers stay dense, and a regex that matches no layer
  is an error;
* a plan: any object with ``patterns_for(layer_name, num_heads)`` returning a pattern, a
  list of per-head patterns, or ``None`` (leave the layer dense), and ``dense_steps``
  (:class:`PatternSource`). Plain patterns and dicts are normalised into this form. A
  source with a ``phase_starts`` tuple of increasing steps (a :class:`~dit_sparse.Plan`
  with phases) is also asked ``patterns_for(layer_name, num_heads, phase)`` for each
  ``phase`` from 1 on, which run from those steps.

Layer names are the transformer's own ``named_modules()`` names (``blocks.3.attn1``); in a
pipeline with a second expert (Wan 2.2) the second transformer's names are prefixed with
``transformer_2.`` so that a plan can tell them apart (an unanchored regex matches both).

``dense_steps`` runs the first steps of every pipeline call dense: an int, or a float in
(0, 1) as a fraction of the schedule (``ceil``), resolved from the scheduler at each call.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import torch

from dit_sparse.patterns import Full, Pattern, parse_pattern

from . import hooks
from .adapters import Adapter, adapter_for

PatternLike = Union[Pattern, str, dict]


@runtime_checkable
class PatternSource(Protocol):
    """What :func:`apply` needs from a plan."""

    dense_steps: Union[int, float]

    def patterns_for(self, layer_name: str, num_heads: int) -> Union[Pattern, Sequence[Pattern], None]:
        ...


class _Uniform:
    def __init__(self, pattern: Pattern):
        self.pattern = pattern
        self.dense_steps = 0

    def patterns_for(self, layer_name, num_heads):
        return self.pattern

    def check_used(self, names):
        pass

    def __repr__(self):
        return repr(self.pattern)


class _ByRegex:
    def __init__(self, table: Dict[str, Any]):
        if not table:
            raise ValueError("spec dict is empty; give at least one {layer-regex: pattern} entry")
        self.entries = []
        for regex, value in table.items():
            try:
                compiled = re.compile(regex)
            except (re.error, TypeError) as exc:
                raise ValueError(f"spec key {regex!r} is not a valid regex: {exc}") from None
            self.entries.append((regex, compiled, _parse_value(value, where=f"spec[{regex!r}]")))
        self.dense_steps = 0
        self.used = set()

    def patterns_for(self, layer_name, num_heads):
        for regex, compiled, value in self.entries:
            if compiled.search(layer_name):
                self.used.add(regex)
                return value
        return None

    def check_used(self, names):
        unused = [regex for regex, _, _ in self.entries if regex not in self.used]
        if unused:
            raise ValueError(f"spec regex(es) {unused} matched no self-attention layer; "
                             f"self-attention layers: {_short(names)}")

    def __repr__(self):
        return repr({regex: value for regex, _, value in self.entries})


def _parse_value(value, *, where: str):
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [Full() if v is None else parse_pattern(v) for v in value]
    try:
        return parse_pattern(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from None


def _short(names: Sequence[str], n: int = 6) -> str:
    names = list(names)
    shown = ", ".join(names[:n])
    return f"[{shown}{', ...' if len(names) > n else ''}] ({len(names)} layers)"


def _normalise(spec) -> Any:
    if isinstance(spec, dict) and "kind" not in spec:
        return _ByRegex(spec)
    if isinstance(spec, (Pattern, str, dict)):
        return _Uniform(parse_pattern(spec))
    if isinstance(spec, PatternSource) or (hasattr(spec, "patterns_for") and hasattr(spec, "dense_steps")):
        return spec
    raise TypeError(f"spec={spec!r} must be a pattern, a {{layer-regex: pattern}} dict, or a plan with "
                    "patterns_for(layer_name, num_heads) and dense_steps")


def _check_dense_steps(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"dense_steps={value!r} must be an int >= 0 or a float fraction in (0, 1)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"dense_steps={value!r} must be >= 0")
        return value
    if float(value).is_integer() and value >= 1:
        return int(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"dense_steps={value!r}: a float must be a fraction in (0, 1) of the schedule")
    return float(value)


# --------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------


def _transformers(target) -> Tuple[List[Tuple[str, torch.nn.Module]], Any]:
    """``[(name prefix, transformer)]`` and the pipeline (or None) of a target."""
    from diffusers import ModelMixin

    if isinstance(target, ModelMixin):
        return [("", target)], None
    first = getattr(target, "transformer", None)
    if isinstance(first, ModelMixin):
        found = [("", first)]
        second = getattr(target, "transformer_2", None)
        if isinstance(second, ModelMixin):
            found.append(("transformer_2.", second))
        return found, target
    raise TypeError(f"target must be a diffusers pipeline with a .transformer or a transformer model (ModelMixin), "
                    f"got {type(target).__name__}")


def _heads(module) -> int:
    """An attention module's head count (``heads``; Kandinsky 6's modules call it ``num_heads``)."""
    heads = getattr(module, "heads", None)
    return int(module.num_heads if heads is None else heads)


def _head_dim(module) -> Optional[int]:
    heads = _heads(module)
    inner = getattr(module, "inner_dim", None)
    if inner is None and hasattr(module, "to_q"):
        inner = getattr(module.to_q, "out_features", None)
    return int(inner) // heads if inner else None


def describe_model(target) -> Dict[str, Any]:
    """``{"class", "name_or_path", "layers", "heads", "head_dim"}`` of a pipeline or transformer:
    its self-attention layers as :func:`apply` names them (what :meth:`dit_sparse.Plan.validate_for`
    compares a plan with)."""
    models, _ = _transformers(target)
    layers: List[str] = []
    heads = head_dim = None
    for prefix, model in models:
        adapter = adapter_for(model)
        for name, module in model.named_modules():
            if not adapter.is_self_attention(name, module):
                continue
            layers.append(prefix + name)
            h, d = _heads(module), _head_dim(module)
            if heads is None:
                heads, head_dim = h, d
            elif (h, d) != (heads, head_dim):
                raise ValueError(f"layer {prefix + name!r} has heads={h}, head_dim={d}, unlike the first layer "
                                 f"({heads}, {head_dim}); plans need one head count per model")
    main = models[0][1]
    name = getattr(getattr(target, "config", None), "_name_or_path", None) or getattr(main.config, "_name_or_path",
                                                                                    None)
    return {"class": type(main).__name__, "name_or_path": str(name) if name else None, "layers": layers,
            "heads": heads, "head_dim": head_dim}


_HANDLES: "weakref.WeakKeyDictionary[torch.nn.Module, SparseHandle]" = weakref.WeakKeyDictionary()


class SparseHandle:
    """What :func:`apply` did; ``remove()`` undoes it exactly.

    Attributes:
        layers: ``{layer name: tuple of per-head patterns}`` of the sparsified layers (the
            first sparse phase of a plan with phases; ``Full`` heads where a layer is dense
            in it).
        phases: ``[(start_step, {layer name: patterns}), ...]``: the later phases of a plan
            with phases (empty otherwise).
        steps: the step tracker; ``steps.log`` lists ``(step, timestep, ran_sparse)`` for
            the steps of the latest pipeline call.
        dense_steps: as given (int or fraction).
    """

    def __init__(self, steps: hooks.StepTracker, dense_steps):
        self.layers: Dict[str, Tuple[Pattern, ...]] = {}
        self.phases: List[Tuple[int, Dict[str, Tuple[Pattern, ...]]]] = []
        self.steps = steps
        self.dense_steps = dense_steps
        self._undo: List[Any] = []
        self._models: List[torch.nn.Module] = []
        self.removed = False

    @property
    def step_log(self) -> List[Tuple[int, Optional[float], bool]]:
        return list(self.steps.log)

    def remove(self) -> None:
        """Restore the original processors, hooks and module names. Idempotent."""
        if self.removed:
            return
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        for model in self._models:
            if _HANDLES.get(model) is self:
                del _HANDLES[model]
        self.removed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    def __repr__(self):
        state = "removed" if self.removed else f"{len(self.layers)} layers"
        return f"SparseHandle({state}, dense_steps={self.dense_steps})"


def _layer_patterns(source, name: str, heads: int, phase: int = 0):
    value = source.patterns_for(name, heads, phase) if phase else source.patterns_for(name, heads)
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != heads:
            raise ValueError(f"layer {name!r} has {heads} heads, but its per-head pattern list has {len(value)}")
        return tuple(Full() if p is None else parse_pattern(p) for p in value)
    return (parse_pattern(value),) * heads


def apply(target, spec, *, dense_steps: Union[int, float, None] = None, backend: Optional[str] = None
          ) -> SparseHandle:
    """Swap sparse attention into the self-attention layers of ``target``.

    Args:
        target: a diffusers pipeline (its ``transformer`` and, when present,
            ``transformer_2``) or a transformer model.
        spec: a pattern, a ``{layer-regex: pattern}`` dict, or a plan (module docstring).
        dense_steps: first steps that run dense (int, or a fraction in (0, 1)); default:
            the plan's ``dense_steps``, 0 for a pattern or dict.
        backend: passed to :func:`dit_sparse.sparse_attention` (``None``, ``"cpu"``,
            ``"triton"``).
    Returns:
        a :class:`SparseHandle`. Applying again replaces the previous application.
    """
    models, pipeline = _transformers(target)
    source = _normalise(spec)
    if hasattr(source, "validate_for"):  # a Plan checks model class, layers and heads
        source.validate_for(describe_model(target))
    dense_steps = _check_dense_steps(getattr(source, "dense_steps", 0) if dense_steps is None else dense_steps)
    if isinstance(dense_steps, float) and pipeline is None:
        raise ValueError(f"dense_steps={dense_steps} is a fraction of the schedule, which needs a pipeline target; "
                         "for a bare transformer pass an int")
    adapters = [adapter_for(model) for _, model in models]
    for _, model in models:
        previous = _HANDLES.get(model)
        if previous is not None:
            previous.remove()

    phase_starts = tuple(getattr(source, "phase_starts", ()))
    steps = hooks.StepTracker(dense_steps, pipeline, phase_starts)
    steps.on_run = getattr(source, "check_steps", None)
    handle = SparseHandle(steps, dense_steps)
    handle.phases = [(start, {}) for start in phase_starts]
    all_names: List[str] = []
    plan: List[Tuple[Adapter, torch.nn.Module, hooks.ForwardState, List[Tuple[str, torch.nn.Module, tuple]]]] = []
    for (prefix, model), adapter in zip(models, adapters):
        state = hooks.ForwardState(adapter, steps)
        state.on_grid = getattr(source, "check_grid", None)
        chosen = []
        for name, module in model.named_modules():
            if not adapter.is_self_attention(name, module):
                continue
            full_name = prefix + name
            all_names.append(full_name)
            phases = [_layer_patterns(source, full_name, _heads(module), phase)
                      for phase in range(len(phase_starts) + 1)]
            if any(p is not None for p in phases):
                chosen.append((full_name, module, phases))
        plan.append((adapter, model, state, chosen))
    if hasattr(source, "check_used"):
        source.check_used(all_names)
    if not any(chosen for *_, chosen in plan):
        classes = ", ".join(type(m).__name__ for _, m in models)
        if not all_names:
            raise ValueError(f"{classes} has no self-attention layers that dit_sparse can sparsify")
        raise ValueError(f"spec {source!r} selects none of the self-attention layers of {classes}: "
                         f"{_short(all_names)}")

    try:
        for adapter, model, state, chosen in plan:
            if not chosen:
                continue
            for name, module, phases in chosen:
                original = module.processor
                if isinstance(original, torch.nn.Module):
                    raise TypeError(f"layer {name!r} uses {type(original).__name__}, a processor with weights "
                                    "(e.g. IP-Adapter); dit_sparse does not wrap those")
                layer = hooks.SparseLayer(name, _heads(module), phases, state, backend)
                module.processor = hooks.wrap_processor(original, layer)
                handle._undo.append(lambda module=module, original=original: setattr(module, "processor", original))
                dense = (Full(),) * _heads(module)
                handle.layers[name] = dense if phases[0] is None else phases[0]
                for i, p in enumerate(phases[1:]):
                    handle.phases[i][1][name] = dense if p is None else p
            key = hooks.install_shim(adapter)
            handle._undo.append(lambda key=key: hooks.uninstall_shim(key))
            handle._undo.append(hooks.register_hook(model, hooks.SparseAttentionHook(state)))
            handle._models.append(model)
            _HANDLES[model] = handle
    except BaseException:
        handle.remove()
        raise
    return handle


def remove(target) -> bool:
    """Undo :func:`apply` on ``target`` (pipeline or transformer). Returns whether anything was applied."""
    models, _ = _transformers(target)
    found = False
    for _, model in models:
        handle = _HANDLES.get(model)
        if handle is not None:
            handle.remove()
            found = True
    return found


@contextlib.contextmanager
def applied(target, spec, **kwargs):
    """``with applied(pipe, spec): ...`` applies on entry and removes on exit."""
    handle = apply(target, spec, **kwargs)
    try:
        yield handle
    finally:
        handle.remove()


def observe(target, observer) -> "hooks.ObserverHandle":
    """Watch or replace the self-attention core calls of ``target``'s transformer families.

    ``observer(call, proceed)`` is called for every self-attention call (queries and keys of
    one length) that the processors of ``target``'s transformer classes make while the
    returned handle is in place, with a :class:`~dit_sparse.pipelines.hooks.AttentionCall`
    (``query``/``key``/``value`` as ``[B, S, heads, head_dim]``, ``layer``, ``step``,
    ``sparse``, ``patterns``, ``layout``, ``run(fn, patterns)``, ``density()``) and
    ``proceed``, which runs the rest of the chain (later observers, then what the call would
    have run: the sparse core on a sparsified layer's sparse step, else the model's own
    attention). It returns the call's output (same shape as ``call.query``): usually
    ``proceed()``'s, possibly another. Observers nest in registration order. The handle is a
    context manager; ``remove()`` restores the module exactly once nothing else needs the
    runtime's shim. Calls are tagged with a layer only in layers :func:`apply` sparsified
    (apply :class:`~dit_sparse.Full` to tag every layer without changing the output).
    Observers are process-wide for those families (every model of the same classes is
    observed). Under Ulysses context parallelism they see only the calls that a sparsified
    layer claims on its sparse steps, each with the rank's heads (``call.head_offset``).

    Example: time the attention core of a pipeline::

        import time
        spent = []

        def timer(call, proceed):
            start = time.perf_counter()
            out = proceed()
            spent.append(time.perf_counter() - start)
            return out

        with ds.observe(pipe, timer):
            pipe(prompt="...", num_inference_steps=4)
    """
    models, _ = _transformers(target)
    adapters: List[Adapter] = []
    for _, model in models:
        adapter = adapter_for(model)
        if all((a.core_module, a.core) != (adapter.core_module, adapter.core) for a in adapters):
            adapters.append(adapter)
    return hooks.observe(adapters, observer)


__all__ = ["apply", "remove", "applied", "observe", "SparseHandle", "PatternSource"]
