"""Classes built on Wan's blocks: WanVACE, WanAnimate, SkyReels-V2 and ChronoEdit.

All four patchify ``[B, C, F, H, W]`` with a 3D ``patch_size`` exactly like Wan, and their
self-attention (``attn1`` of each block) holds video tokens only; text and image tokens
enter through the cross-attention ``attn2``. Each class's ``WanAttention`` processor calls
``dispatch_attention_fn``, looked up in the module that defines the processor:

* ``WanVACETransformer3DModel`` reuses ``transformer_wan``'s processor; its control branch
  ``vace_blocks.N.attn1`` attends over the same grid (control tokens, zero-padded to the
  video's length) and is sparsified too.
* ``WanAnimateTransformer3DModel``: the grid includes the reference frame (``T + 1``
  latent frames); the face adapter (``face_adapter.N``) is per-frame cross-attention to
  face-motion tokens and stays dense.
* ``SkyReelsV2Transformer3DModel``: with ``num_frame_per_block > 1`` (autoregressive
  diffusion forcing) the model passes a block-causal ``[S, S]`` mask to self-attention,
  which no dit-sparse pattern expresses; such forwards are refused with an error.
* ``ChronoEditTransformer3DModel``: a Wan copy whose temporal RoPE skips frames; the token
  grid is unchanged.
"""

import re

from . import Adapter, register, require

_BLOCKS = re.compile(r"^blocks\.\d+\.attn1$")
_VACE = re.compile(r"^(blocks|vace_blocks)\.\d+\.attn1$")
_MODULE = "diffusers.models.transformers."


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    pt, ph, pw = model.config.patch_size
    _, _, f, h, w = x.shape
    return (f // pt, h // ph, w // pw)


def _skyreels_grid(model, bound):
    per_block = int(getattr(model.config, "num_frame_per_block", 1) or 1)
    if per_block > 1:
        raise ValueError(f"SkyReelsV2Transformer3DModel with num_frame_per_block={per_block} passes a block-causal "
                         "mask to self-attention (autoregressive diffusion forcing); dit_sparse supports only "
                         "num_frame_per_block=1, where self-attention is unmasked")
    return _grid(model, bound)


def _self(pattern):
    return lambda name, module: bool(pattern.match(name))


WAN_VACE = register(Adapter(
    family="wan_vace",
    model_class="WanVACETransformer3DModel",
    core="dispatch",
    core_module=_MODULE + "transformer_wan",
    text_position=None,
    grid=_grid,
    is_self_attention=_self(_VACE),
))

WAN_ANIMATE = register(Adapter(
    family="wan_animate",
    model_class="WanAnimateTransformer3DModel",
    core="dispatch",
    core_module=_MODULE + "transformer_wan_animate",
    text_position=None,
    grid=_grid,
    is_self_attention=_self(_BLOCKS),
))

SKYREELS_V2 = register(Adapter(
    family="skyreels_v2",
    model_class="SkyReelsV2Transformer3DModel",
    core="dispatch",
    core_module=_MODULE + "transformer_skyreels_v2",
    text_position=None,
    grid=_skyreels_grid,
    is_self_attention=_self(_BLOCKS),
))

CHRONOEDIT = register(Adapter(
    family="chronoedit",
    model_class="ChronoEditTransformer3DModel",
    core="dispatch",
    core_module=_MODULE + "transformer_chronoedit",
    text_position=None,
    grid=_grid,
    is_self_attention=_self(_BLOCKS),
))
