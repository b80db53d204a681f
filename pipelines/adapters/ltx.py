"""LTX-Video (``LTXVideoTransformer3DModel``).

Self-attention ``transformer_blocks.N.attn1`` holds video tokens only (``attn2`` is
cross-attention). The input is already packed ``[B, S, C]``; the grid comes from the
``num_frames``, ``height`` and ``width`` forward arguments (latent sizes) divided by
``patch_size_t`` / ``patch_size``. ``LTXVideoAttnProcessor`` calls ``dispatch_attention_fn``.
"""

import re

from . import Adapter, register, require

_SELF = re.compile(r"^transformer_blocks\.\d+\.attn1$")


def _grid(model, bound):
    f, h, w = (int(require(bound, name, model)) for name in ("num_frames", "height", "width"))
    p, pt = model.config.patch_size, model.config.patch_size_t
    return (f // pt, h // p, w // p)


LTX = register(Adapter(
    family="ltx",
    model_class="LTXVideoTransformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_ltx",
    text_position=None,
    grid=_grid,
    is_self_attention=lambda name, module: bool(_SELF.match(name)),
))
