"""ConsisID (``ConsisIDTransformer3DModel``), a CogVideoX 1.0 derivative for identity-preserving video.

Joint attention in ``transformer_blocks.N.attn1``: text first, then video, through
``CogVideoXAttnProcessor2_0``, which calls ``F.scaled_dot_product_attention`` in
``diffusers.models.attention_processor``. The face perceiver cross-attention
(``perceiver_cross_attention``) stays dense. Input ``[B, F, C, H, W]``, spatial
``patch_size`` only.
"""

import re

from . import Adapter, encoder_len, register, require

_SELF = re.compile(r"^transformer_blocks\.\d+\.attn1$")


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    p = model.config.patch_size
    _, f, _, h, w = x.shape
    return (f, h // p, w // p)


CONSISID = register(Adapter(
    family="consisid",
    model_class="ConsisIDTransformer3DModel",
    core="sdpa",
    core_module="diffusers.models.attention_processor",
    text_position="first",
    grid=_grid,
    text_len=encoder_len,
    is_self_attention=lambda name, module: bool(_SELF.match(name)),
))
