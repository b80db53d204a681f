"""Per-family adapters: what dit-sparse needs to know about one diffusers transformer class.

An :class:`Adapter` answers four questions for its model class, and nothing else:

* which attention modules are video self-attention (``is_self_attention``): only those are
  ever sparsified; cross-attention to the text encoder and text-only refiners stay dense;
* where the model's processors call the attention core (``core``): ``"dispatch"`` for
  processors that call ``dispatch_attention_fn`` (a name looked up in the globals of
  ``core_module`` at call time), ``"sdpa"`` for processors that call
  ``F.scaled_dot_product_attention`` directly (``F`` looked up in ``core_module``);
* the post-patchify token grid ``(T, H, W)`` and the joint-text length of one transformer
  forward (``grid``, ``text_len``), from the bound forward arguments and the model config;
* where joint text sits in the self-attention sequence (``text_position``).

Adding a family is one small file that defines an adapter and calls :func:`register`; the
helpers at the end of this module (:func:`layer_names`, :func:`hidden_states_grid`,
:func:`patchified_grid`, :func:`config_patch`, :func:`require`, :func:`encoder_len`) cover
what most families share, so the file holds only what is particular to its model.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

Triple = Tuple[int, int, int]


@dataclass(frozen=True)
class Adapter:
    """How one diffusers transformer class runs its self-attention.

    Attributes:
        family: short family name (``"wan"``, ``"flux"``, ...).
        model_class: class name in ``diffusers`` (e.g. ``"WanTransformer3DModel"``).
        core: ``"dispatch"`` or ``"sdpa"`` (see the module docstring).
        core_module: dotted module whose global (``dispatch_attention_fn`` or ``F``) the
            processors of this family look up.
        text_position: ``"first"``/``"last"`` for joint attention, ``None`` when
            self-attention holds video tokens only.
        variable_text: True when the processor drops padded text tokens itself, so the
            text length differs per batch element (Mochi); the core call's length decides.
        grid: ``(model, bound_args) -> (T, H, W)`` after patchify.
        text_len: ``(model, bound_args) -> int``: joint text tokens of this forward.
        is_self_attention: ``(name, module) -> bool`` over ``model.named_modules()``.
    """

    family: str
    model_class: str
    core: str
    core_module: str
    text_position: Optional[str]
    grid: Callable[[Any, Dict[str, Any]], Triple]
    is_self_attention: Callable[[str, Any], bool]
    text_len: Callable[[Any, Dict[str, Any]], int] = lambda model, bound: 0
    variable_text: bool = False

    def resolve_class(self):
        import diffusers

        return getattr(diffusers, self.model_class, None)


_ADAPTERS: List[Adapter] = []


def register(adapter: Adapter) -> Adapter:
    if adapter.core not in ("dispatch", "sdpa"):
        raise ValueError(f"adapter {adapter.family!r}: core={adapter.core!r} must be 'dispatch' or 'sdpa'")
    _ADAPTERS.append(adapter)
    return adapter


_FAMILY_FILES = ("wan", "hunyuan_video", "cogvideox", "ltx", "mochi", "flux", "sd3", "wan_derivatives",
                 "consisid", "allegro", "cosmos", "easyanimate", "qwenimage", "lumina2",
                 "flux2", "hunyuan_video15", "ltx2", "joyimage", "motif_video", "kandinsky6")

# Transformer classes dit-sparse does not support, with why: class name -> reason.
# ``adapter_for`` raises with the reason; docs/models.md is generated from this table and the
# adapters (``python -m dit_sparse.pipelines.adapters``). Reasons starting "not adapted yet"
# name classes whose self-attention may fit a token layout but has no adapter (and test) yet.
_LINEAR = "linear attention (no softmax attention matrix to sparsify)"
_NOT_A_GRID = "not a video or image DiT: its attention runs over no patchified token grid"
REFUSED: Dict[str, str] = {
    "SanaTransformer2DModel": _LINEAR,
    "SanaVideoTransformer3DModel": _LINEAR,
    "SanaWMTransformer3DModel": "linear attention (gated delta-net) over the temporal axis",
    "LatteTransformer3DModel": "factorized attention: spatial blocks attend within one frame and temporal blocks "
                               "across frames at one position; no self-attention spans the 3D grid",
    "Kandinsky5Transformer3DModel": "brings its own sparse attention (NABLA, a flex-attention BlockMask); "
                                    "dit_sparse has no pattern for it and would replace it",
    "WanAnimate2Transformer3DModel": "generation and reference tokens are packed into one buffer attended "
                                     "through a flex-attention BlockMask with a KV cache; not one token grid",
    "HunyuanVideoFramepackTransformer3DModel": "self-attention also holds clean history latents at 1x/2x/4x "
                                               "downsampling (FramePack context packing): several grids of "
                                               "different resolutions, not one grid plus text",
    "AnyFlowFARTransformer3DModel": "frame-level autoregressive (FAR): causal flex-attention BlockMask over "
                                    "clean context chunks at a coarser patch plus the noisy chunk, with a KV "
                                    "cache; several grids under a causal mask, not one grid",
    "HeliosTransformer3DModel": "self-attention also holds short/mid/long history latents patchified at 1x/2x/4x "
                                "(several grids of different resolutions) with amplified history keys",
    "Cosmos3OmniTransformer": "mixture-of-transformers over packed variable-length items: causal understanding "
                              "tokens plus generation tokens (vision, sound, action) attending to both; not one grid",
    "JoyImageEditPlusTransformer3DModel": "target and reference images of different sizes (shape_list) packed per "
                                          "sample into one padded sequence: several grids, not one",
    "Kandinsky6SRTransformer3DModel": "brings its own sparse attention (NABLA plus a sliding-tile prior, a "
                                      "flex-attention BlockMask); dit_sparse has no pattern for it and would replace it",
    "MiniMaxH3Transformer3DModel": "one packed sequence of text, conditioning image/video, audio and target video "
                                   "rows scattered at caller-given indices: no token grid the forward names",
    "SanaWMLTX2RefinerTransformer3DModel": "chunk-causal autoregressive refiner: each block's queries attend to a "
                                           "sliding-window KV cache (attention sink plus refined history), not to "
                                           "their own grid",
    "TransformerTemporalModel": _NOT_A_GRID + " (temporal attention inside a UNet)",
    "PriorTransformer": _NOT_A_GRID + " (CLIP-embedding prior)",
    "StableAudioDiTModel": "audio: 1D latent sequence, no spatial grid",
    "StableAudio3DiTModel": "audio: 1D latent sequence, no spatial grid",
    "AceStepTransformer1DModel": "audio: 1D latent sequence, no spatial grid",
    "MiniMaxMusic3Transformer1DModel": "audio: 1D latent sequence, no spatial grid",
}


def _load_all() -> None:
    for name in _FAMILY_FILES:
        importlib.import_module(f"{__name__}.{name}")


def adapters() -> List[Adapter]:
    if not _ADAPTERS:
        _load_all()
    return list(_ADAPTERS)


def supported_classes() -> List[str]:
    return [a.model_class for a in adapters()]


def adapter_for(model) -> Adapter:
    """The adapter of ``model``'s class (exact class or a subclass); a clear error otherwise."""
    for cls in type(model).__mro__:
        for adapter in adapters():
            if adapter.resolve_class() is cls:
                return adapter
    name = type(model).__name__
    reason = next((REFUSED[cls.__name__] for cls in type(model).__mro__ if cls.__name__ in REFUSED), None)
    why = f" ({reason})" if reason else ""
    raise TypeError(f"dit_sparse does not support {name}{why}; supported transformer classes: "
                    f"{', '.join(supported_classes())}")


# --------------------------------------------------------------------------------------
# Helpers shared by the family files
# --------------------------------------------------------------------------------------


def require(bound: Dict[str, Any], name: str, model) -> Any:
    value = bound.get(name)
    if value is None:
        raise ValueError(f"{type(model).__name__}.forward was called without {name!r}; dit_sparse needs it "
                         "to find the token grid")
    return value


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def layer_names(*patterns: str) -> Callable[[str, Any], bool]:
    r"""An ``is_self_attention`` predicate: True for the modules whose whole name (as in
    ``model.named_modules()``) matches one of the regular expressions ``patterns``.

    ``layer_names(r"blocks\.\d+\.attn1")`` selects ``blocks.0.attn1``, ``blocks.1.attn1``, ...
    and neither ``blocks.0.attn2`` nor ``blocks.0.attn1.to_q``.
    """
    if not patterns:
        raise ValueError("layer_names() needs at least one pattern")
    compiled = re.compile("|".join(f"(?:{p})" for p in patterns))
    return lambda name, module: compiled.fullmatch(name) is not None


def config_patch(model) -> Triple:
    """``(pt, ph, pw)``, the patch of ``model.config``: ``patch_size`` is either a
    ``(pt, ph, pw)`` triple (Wan, Cosmos) or one size for H and W, time then being patched by
    ``patch_size_t`` when the config has one that is set (CogVideoX 1.0 leaves it ``None``)
    and not patched otherwise."""
    patch = model.config.patch_size
    if isinstance(patch, (tuple, list)):
        pt, ph, pw = patch
        return pt, ph, pw
    return getattr(model.config, "patch_size_t", None) or 1, patch, patch


def patchified_grid(sizes: Triple, patch: Triple, *, ceil_frames: bool = False) -> Triple:
    """The token grid ``(T, H, W)`` that patchifying a latent of ``sizes = (F, H, W)`` with
    ``patch = (pt, ph, pw)`` makes: each size over its patch, rounded down (a strided patch
    embedding drops a remainder), the frames rounded up with ``ceil_frames`` (CogVideoX 1.5
    pads them to a multiple of ``pt``)."""
    (f, h, w), (pt, ph, pw) = sizes, patch
    return (ceil_div(f, pt) if ceil_frames else f // pt, h // ph, w // pw)


_FRAME_AXIS = {"BCFHW": 2, "BFCHW": 1, "BCHW": None}


def hidden_states_grid(layout: str, *, ceil_frames: bool = False) -> Callable[[Any, Dict[str, Any]], Triple]:
    """A ``grid`` function for models whose ``hidden_states`` is the unpatchified latent,
    patchified by :func:`config_patch`.

    Args:
        layout: the axes of ``hidden_states``: ``"BCFHW"`` (most video models), ``"BFCHW"``
            (CogVideoX and its derivatives) or ``"BCHW"`` (images, ``T = 1``, only the spatial
            patch applies).
        ceil_frames: round the frames up (see :func:`patchified_grid`).
    """
    if layout not in _FRAME_AXIS:
        raise ValueError(f"{layout=} is not one of {sorted(_FRAME_AXIS)}")
    frame_axis = _FRAME_AXIS[layout]

    def grid(model, bound: Dict[str, Any]) -> Triple:
        x = require(bound, "hidden_states", model)
        if x.dim() != len(layout):
            raise ValueError(f"{type(model).__name__}: hidden_states has shape {tuple(x.shape)}; dit_sparse expects "
                             f"{len(layout)} dimensions ({layout})")
        pt, ph, pw = config_patch(model)
        if frame_axis is None:
            return (1, x.shape[-2] // ph, x.shape[-1] // pw)
        return patchified_grid((x.shape[frame_axis], x.shape[-2], x.shape[-1]), (pt, ph, pw), ceil_frames=ceil_frames)

    return grid


def encoder_len(model, bound: Dict[str, Any]) -> int:
    """Joint text length = the encoder sequence length the model attends jointly with."""
    return int(require(bound, "encoder_hidden_states", model).shape[1])


__all__ = ["Adapter", "REFUSED", "register", "adapters", "adapter_for", "supported_classes"]
