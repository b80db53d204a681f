"""Exact merge of padded text keys in Wan's cross-attention.

Diffusers' Wan pipelines pad every prompt's T5 embedding to ``max_sequence_length`` (512)
rows with zeros, and the transformer's condition embedder maps every zero row to the same
vector. In each block's cross-attention (``attn2``) all padded rows of a prompt therefore give
one key ``k`` and one value ``v``, repeated ``n`` times. ``n`` identical keys attend exactly
like one key whose logit carries an additive bias ``log n``: the softmax weight of each copy
is ``e^s / Z``, so the copies together contribute ``n e^s v = e^(s + log n) v`` to the
numerator and the same to ``Z``. This is the pooled-key identity of the far field
(:mod:`dit_sparse.farfield`, where a box of keys is summarised by its mean key with a
``log(count)`` bias), here with nothing lost to pooling because the keys are equal.

:func:`merge_text_padding` wraps the processor of every cross-attention module it can merge
exactly. Per call (``encoder_hidden_states`` given, no ``attention_mask``), for each batch row
``b`` it finds the trailing run of rows equal (``==`` on every channel) to the last row:
``r_b`` rows starting at ``p_b``. When every batch row has ``r_b >= 2``, the processor gets the
first ``L = 1 + max_b p_b`` rows only, and an additive float mask ``[B, 1, 1, L]`` in the dtype
of ``hidden_states``: 0 on the real rows ``[0, p_b)``, ``-inf`` on the padded rows
``[p_b, L - 1)`` and ``log r_b`` on row ``L - 1``, which is padding in every batch row and
stands for all ``r_b`` copies. Otherwise the call runs unchanged. With ~10 real tokens of 512
the cross-attention core is ~40x cheaper.

Exact up to rounding: the softmax sums are the same sums regrouped, the key and value of the
kept padded row are computed by the same projections from the same input row, and the bias
``log r_b`` is rounded once to the mask's dtype (in bfloat16 its relative error is 2^-9, in
the logit of the padding only). Only a backend that honours an additive float
``attn_mask`` can take the merge: diffusers' ``native``, ``_native_math`` and
``_native_efficient`` (all ``F.scaled_dot_product_attention``; the mask broadcasts over heads
and queries). Under any other backend (flash, sage, xformers, ..., which drop or refuse a
mask) the call runs unchanged, so the merge is never silently wrong. The first call of a
transformer forward inspects ``encoder_hidden_states`` (one device sync); the other blocks of
that forward reuse the result (the same tensor is passed to every block).

Where it applies: modules whose processor is exactly Wan's ``WanAttnProcessor`` (Wan 2.1/2.2
and WanVACE, which reuses it; ``WanAttnProcessor2_0`` is a deprecated alias whose instances
are ``WanAttnProcessor``), or its verbatim copies in WanAnimate's and ChronoEdit's modules, and
that are cross-attention (``attn.is_cross_attention`` or a name ending in ``attn2``). Modules
with an image branch (``attn.add_k_proj`` set: Wan I2V, ChronoEdit, WanAnimate with image
embeddings) are left alone: their processor splits the context at the hard-coded 512. Not
handled, because their processors are other classes: SkyReels-V2
(``SkyReelsV2AttnProcessor``) and AnyFlow (``AnyFlowCrossAttnProcessor``), which pass the
context-parallel config to the cross-attention call; the other families (HunyuanVideo,
LTX-Video, Mochi, ...) mask their padding themselves or use joint attention.

Composes with :func:`dit_sparse.apply` (which wraps the self-attention processors ``attn1``;
its shim passes cross-attention calls, whose queries and keys differ in length, through
unchanged) and with diffusers' caches (:func:`dit_sparse.cached`, which hook modules, not
processors), in any order; removing either leaves the other as it runs alone.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import weakref
from typing import Any, Dict, List, Optional, Tuple

import torch

from .hooks import ProcessorWrapper, wrapper_class

#: Processor classes (module, class name) whose cross-attention call is Wan's.
SUPPORTED_PROCESSORS = (
    ("diffusers.models.transformers.transformer_wan", "WanAttnProcessor"),
    ("diffusers.models.transformers.transformer_wan", "WanAttnProcessor2_0"),
    ("diffusers.models.transformers.transformer_wan_animate", "WanAttnProcessor"),
    ("diffusers.models.transformers.transformer_chronoedit", "WanAttnProcessor"),
)

#: diffusers attention backends that pass an additive float ``attn_mask`` to SDPA.
MASK_BACKENDS = frozenset({"native", "_native_math", "_native_efficient"})

_CALL_PARAMETERS = ("self", "attn", "hidden_states", "encoder_hidden_states", "attention_mask", "rotary_emb")


@functools.lru_cache(maxsize=None)
def supported_classes() -> Tuple[type, ...]:
    """The classes of :data:`SUPPORTED_PROCESSORS` that the installed diffusers has, with Wan's
    call signature ``(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)``."""
    found = []
    for module_name, name in SUPPORTED_PROCESSORS:
        try:
            cls = getattr(importlib.import_module(module_name), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            params = tuple(inspect.signature(cls.__call__).parameters)
            if params == _CALL_PARAMETERS:
                found.append(cls)
    return tuple(found)


def _backend_name(processor) -> str:
    """The diffusers attention backend a processor's ``dispatch_attention_fn`` call will use."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    backend = getattr(processor, "_attention_backend", None)
    if backend is None:
        backend = _AttentionBackendRegistry.get_active_backend()[0]
    return AttentionBackendName(backend).value


class _Merge:
    """Where the padding of one ``encoder_hidden_states`` starts: ``keep`` rows to keep, per
    batch row the first padded row and the run length; masks built once per dtype."""

    def __init__(self, keep: int, first: List[int], runs: List[int]):
        self.keep, self.first, self.runs = keep, first, runs
        self._masks: Dict[torch.dtype, torch.Tensor] = {}

    def mask(self, dtype: torch.dtype, device) -> torch.Tensor:
        """``[B, 1, 1, keep]`` additive mask: 0 real, -inf padded, ``log(run)`` on the last row."""
        mask = self._masks.get(dtype)
        if mask is None:
            pos = torch.arange(self.keep, device=device)
            first = torch.tensor(self.first, device=device)[:, None]
            full = torch.zeros(len(self.first), self.keep, dtype=torch.float64, device=device)
            full.masked_fill_(pos >= first, -math.inf)
            full[:, -1] = torch.tensor([math.log(r) for r in self.runs], dtype=torch.float64, device=device)
            mask = self._masks[dtype] = full.to(dtype)[:, None, None, :]
        return mask


def _version(tensor: torch.Tensor) -> Optional[int]:
    """The tensor's version counter (None for inference-mode tensors, which have none)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


class _State:
    """Shared by the wrappers of one handle: call counts and the last inspected context."""

    def __init__(self):
        self.merged = 0
        self.unchanged = 0
        self._last: Optional[Tuple[Any, int, Tuple[int, ...], Optional[_Merge]]] = None

    @torch.compiler.disable
    def find(self, context: torch.Tensor) -> Optional[_Merge]:
        """The merge of ``context`` (``[B, S, C]``), or None when some batch row has no padded
        run of at least 2 rows."""
        last, version = self._last, _version(context)
        if (last is not None and version is not None and last[0]() is context and last[1] == version
                and last[2] == tuple(context.shape)):
            return last[3]
        merge = None
        if context.dim() == 3 and context.shape[1] >= 2:
            same = (context == context[:, -1:, :]).all(dim=-1)  # [B, S]
            runs = same.flip(1).to(torch.int32).cumprod(dim=1).sum(dim=1).tolist()
            if min(runs) >= 2:
                s = context.shape[1]
                first = [s - r for r in runs]
                merge = _Merge(1 + max(first), first, runs)
        self._last = (weakref.ref(context), version, tuple(context.shape), merge)
        return merge


class TextPaddingProcessor(ProcessorWrapper):
    """Wraps a Wan cross-attention processor: calls it with the padded text rows merged
    (module docstring), or unchanged."""

    name_prefix = "TextPadding"

    def __init__(self, original, state: _State):
        super().__init__(original)
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 **kwargs):
        if encoder_hidden_states is not None and attention_mask is None:
            merge = self.state.find(encoder_hidden_states) if _backend_name(self.original) in MASK_BACKENDS else None
            if merge is not None:
                self.state.merged += 1
                mask = merge.mask(hidden_states.dtype, encoder_hidden_states.device)
                return self.original(attn, hidden_states, encoder_hidden_states[:, :merge.keep], mask, rotary_emb,
                                     **kwargs)
        self.state.unchanged += 1
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)

    def __repr__(self):
        return f"{type(self).__name__}({self.original!r})"


def wrap(original, state: _State) -> TextPaddingProcessor:
    """The merging wrapper of ``original`` (a processor object)."""
    return wrapper_class(TextPaddingProcessor, type(original))(original, state)


#: The handle applied to each transformer (applying again replaces it).
_HANDLES: "weakref.WeakKeyDictionary[torch.nn.Module, TextPaddingHandle]" = weakref.WeakKeyDictionary()


class TextPaddingHandle:
    """What :func:`merge_text_padding` did. ``remove()`` puts back the original processor
    objects (idempotent; a module whose processor was replaced since is left as it is). A
    context manager. ``modules`` names the wrapped modules (``transformer_2.`` prefixed for
    Wan 2.2's second expert); ``merged_calls`` / ``unchanged_calls`` count the calls that ran
    merged and unchanged."""

    def __init__(self, state: _State):
        self._state = state
        self.modules: List[str] = []
        self._undo: List[Tuple[torch.nn.Module, Any, Any]] = []
        self._models: List[torch.nn.Module] = []
        self.removed = False

    @property
    def merged_calls(self) -> int:
        return self._state.merged

    @property
    def unchanged_calls(self) -> int:
        return self._state.unchanged

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        for module, original, wrapper in reversed(self._undo):
            if module.processor is wrapper:
                module.processor = original
        for model in self._models:
            if _HANDLES.get(model) is self:
                del _HANDLES[model]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    def __repr__(self):
        return (f"TextPaddingHandle({len(self.modules)} modules, merged_calls={self.merged_calls}, "
                f"unchanged_calls={self.unchanged_calls}, removed={self.removed})")


def _is_cross_attention(name: str, module) -> bool:
    return bool(getattr(module, "is_cross_attention", False)) or name.endswith("attn2")


def merge_text_padding(target) -> TextPaddingHandle:
    """Merge the padded text rows of every exactly mergeable cross-attention (module docstring).

    Args:
        target: a diffusers pipeline (its ``transformer`` and, when present,
            ``transformer_2``) or a transformer model.
    Returns:
        a :class:`TextPaddingHandle`; applying again to the same transformer replaces the
        previous application (whose handle's ``remove()`` then does nothing).
    Raises:
        ValueError: no cross-attention module with a supported processor; the message names
            the processor classes found.
    """
    from .api import _transformers

    models, _ = _transformers(target)
    supported = supported_classes()
    chosen: List[Tuple[str, torch.nn.Module]] = []
    seen: Dict[str, int] = {}
    for prefix, model in models:
        for name, module in model.named_modules():
            processor = getattr(module, "processor", None)
            if processor is None or not hasattr(module, "set_processor"):
                continue
            if isinstance(processor, TextPaddingProcessor):
                processor = processor.original  # applied before: replaced below
            cls = type(processor)
            label = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
            if cls in supported and not _is_cross_attention(name, module):
                label += " (self-attention)"
            elif cls in supported and getattr(module, "add_k_proj", None) is not None:
                label += " (image branch, left alone)"
            elif cls in supported:
                chosen.append((prefix + name, module))
                continue
            seen[label] = seen.get(label, 0) + 1
    if not chosen:
        found = ", ".join(f"{label} x{n}" for label, n in sorted(seen.items())) or "no attention modules"
        classes = ", ".join(type(m).__name__ for _, m in models)
        names = ", ".join(f"{c.__module__.rsplit('.', 1)[-1]}.{c.__name__}" for c in supported)
        raise ValueError(f"{classes} has no cross-attention module whose padded text can be merged exactly "
                         f"(supported processors: {names}, without an image branch); found: {found}")
    for _, model in models:
        previous = _HANDLES.get(model)
        if previous is not None:
            previous.remove()
    state = _State()
    handle = TextPaddingHandle(state)
    for full_name, module in chosen:
        original = module.processor
        wrapper = wrap(original, state)
        module.processor = wrapper
        handle._undo.append((module, original, wrapper))
        handle.modules.append(full_name)
    for _, model in models:
        handle._models.append(model)
        _HANDLES[model] = handle
    return handle


__all__ = ["MASK_BACKENDS", "SUPPORTED_PROCESSORS", "TextPaddingHandle", "TextPaddingProcessor",
           "merge_text_padding", "supported_classes"]
