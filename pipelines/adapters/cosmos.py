"""Cosmos Predict (``CosmosTransformer3DModel``, Cosmos 1.0 and 2.x).

Self-attention ``transformer_blocks.N.attn1`` holds video tokens only, unmasked (text and
Cosmos 2.5's image context enter through the cross-attention ``attn2``).
``CosmosAttnProcessor2_0`` calls ``dispatch_attention_fn``. Input ``[B, C, F, H, W]``
with a 3D ``patch_size``; the condition and padding masks are extra input channels and do
not change the grid.
"""

import re

from . import Adapter, register, require

_SELF = re.compile(r"^transformer_blocks\.\d+\.attn1$")


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    pt, ph, pw = model.config.patch_size
    _, _, f, h, w = x.shape
    return (f // pt, h // ph, w // pw)


COSMOS = register(Adapter(
    family="cosmos",
    model_class="CosmosTransformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_cosmos",
    text_position=None,
    grid=_grid,
    is_self_attention=lambda name, module: bool(_SELF.match(name)),
))
