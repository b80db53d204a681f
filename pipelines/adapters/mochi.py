"""Mochi 1 (``MochiTransformer3DModel``).

Joint attention in ``transformer_blocks.N.attn1`` (``MochiAttention``): video first, then
the text. ``MochiAttnProcessor2_0`` drops the padded text tokens itself and calls
``F.scaled_dot_product_attention`` once per batch element, so the text length is read from
each call (``variable_text``). Input ``[B, C, F, H, W]``, spatial ``patch_size`` only.
"""

import re

from . import Adapter, encoder_len, register, require

_SELF = re.compile(r"^transformer_blocks\.\d+\.attn1$")


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    p = model.config.patch_size
    _, _, f, h, w = x.shape
    return (f, h // p, w // p)


MOCHI = register(Adapter(
    family="mochi",
    model_class="MochiTransformer3DModel",
    core="sdpa",
    core_module="diffusers.models.attention_processor",
    text_position="last",
    grid=_grid,
    text_len=encoder_len,
    variable_text=True,
    is_self_attention=lambda name, module: bool(_SELF.match(name)),
))
