"""CogVideoX 1.0 / 1.5 (``CogVideoXTransformer3DModel``).

Joint attention in ``transformer_blocks.N.attn1``: text first, then video.
``CogVideoXAttnProcessor2_0`` calls ``F.scaled_dot_product_attention`` directly, so the
intercepted name is ``F`` in ``diffusers.models.attention_processor``. Input
``[B, F, C, H, W]``; CogVideoX 1.5 patches time too (``patch_size_t``, frames rounded up).
"""

import re

from . import Adapter, ceil_div, encoder_len, register, require

_SELF = re.compile(r"^transformer_blocks\.\d+\.attn1$")


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    p, pt = model.config.patch_size, model.config.patch_size_t or 1
    _, f, _, h, w = x.shape
    return (ceil_div(f, pt), h // p, w // p)


COGVIDEOX = register(Adapter(
    family="cogvideox",
    model_class="CogVideoXTransformer3DModel",
    core="sdpa",
    core_module="diffusers.models.attention_processor",
    text_position="first",
    grid=_grid,
    text_len=encoder_len,
    is_self_attention=lambda name, module: bool(_SELF.match(name)),
))
