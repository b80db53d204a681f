"""HunyuanVideo (``HunyuanVideoTransformer3DModel``).

Joint attention in ``transformer_blocks.N.attn`` (dual stream) and
``single_transformer_blocks.N.attn``: video tokens first, then the text tokens, padded to a
fixed length; the model passes a ``[B, 1, 1, S]`` boolean key mask that drops the padding,
which becomes ``key_mask``. The text refiner's attention (text only) stays dense.
Input ``[B, C, F, H, W]`` with ``patch_size`` and ``patch_size_t``.
"""

import re

from . import Adapter, encoder_len, register, require

_SELF = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.attn$")


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    p, pt = model.config.patch_size, model.config.patch_size_t
    _, _, f, h, w = x.shape
    return (f // pt, h // p, w // p)


HUNYUAN_VIDEO = register(Adapter(
    family="hunyuan_video",
    model_class="HunyuanVideoTransformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_hunyuan_video",
    text_position="last",
    grid=_grid,
    text_len=encoder_len,
    is_self_attention=lambda name, module: bool(_SELF.match(name)),
))
