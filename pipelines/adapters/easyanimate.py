"""EasyAnimate V5.1 (``EasyAnimateTransformer3DModel``).

Joint attention in ``transformer_blocks.N.attn1``: the text (the first encoder's tokens,
then the optional T5 tokens) first, then the video. ``EasyAnimateAttnProcessor2_0`` calls
``F.scaled_dot_product_attention``, ``F`` being a global of ``transformer_easyanimate``.
Input ``[B, C, F, H, W]``, patchified frame by frame with a spatial ``patch_size``.
"""

import re

from . import Adapter, encoder_len, register, require

_SELF = re.compile(r"^transformer_blocks\.\d+\.attn1$")


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    p = model.config.patch_size
    _, _, f, h, w = x.shape
    return (f, h // p, w // p)


def _text_len(model, bound):
    t5 = bound.get("encoder_hidden_states_t5")
    return encoder_len(model, bound) + (0 if t5 is None else int(t5.shape[1]))


EASYANIMATE = register(Adapter(
    family="easyanimate",
    model_class="EasyAnimateTransformer3DModel",
    core="sdpa",
    core_module="diffusers.models.transformers.transformer_easyanimate",
    text_position="first",
    grid=_grid,
    text_len=_text_len,
    is_self_attention=lambda name, module: bool(_SELF.match(name)),
))
