"""Wan 2.1 / 2.2 (``WanTransformer3DModel``; Wan 2.2's second expert is ``pipe.transformer_2``).

Self-attention ``blocks.N.attn1`` holds video tokens only (text enters through the
cross-attention ``attn2``, never sparsified). ``WanAttnProcessor`` calls
``dispatch_attention_fn``. Input ``[B, C, F, H, W]``, ``patch_size = (pt, ph, pw)``.
"""

import re

from . import Adapter, register, require

_SELF = re.compile(r"^blocks\.\d+\.attn1$")


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    pt, ph, pw = model.config.patch_size
    _, _, f, h, w = x.shape
    return (f // pt, h // ph, w // pw)


WAN = register(Adapter(
    family="wan",
    model_class="WanTransformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_wan",
    text_position=None,
    grid=_grid,
    is_self_attention=lambda name, module: bool(_SELF.match(name)),
))
